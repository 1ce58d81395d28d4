import Catalog
import Foundation

/// etcd v3's JSON gateway, typed as its protobuf messages map to JSON: 64-bit integers as strings, bytes as
/// base64, and proto3's zero values (a PUT event's type, `more: false`) left out. Only the fields Signpost reads.
enum EtcdJSON {
    struct Header: Decodable, Sendable {
        var cluster_id: String?
        var revision: String?
    }

    struct KeyValue: Decodable, Sendable {
        var key: String?
        var value: String?
        var mod_revision: String?

        /// The key's bytes (a missing key or value is empty, proto3's default); nil when not base64.
        var keyBytes: [UInt8]? { EtcdJSON.bytes(key) }
        var valueBytes: [UInt8]? { EtcdJSON.bytes(value) }
        var modRevision: Int64? { mod_revision.flatMap { Int64($0) } }
    }

    struct RangeResponse: Decodable, Sendable {
        var header: Header?
        var kvs: [KeyValue]?
        var more: Bool?
    }

    struct Event: Decodable, Sendable {
        /// "DELETE", or absent for a PUT.
        var type: String?
        var kv: KeyValue?
    }

    struct WatchResult: Decodable, Sendable {
        var header: Header?
        var created: Bool?
        var canceled: Bool?
        var compact_revision: String?
        var cancel_reason: String?
        var events: [Event]?
    }

    /// The gateway's stream error: `{"grpc_code", "http_code", "message", "http_status"}`.
    struct StreamError: Decodable, Sendable {
        var http_code: UInt?
        var message: String?
    }

    /// One line of `/v3/watch`'s stream.
    struct WatchLine: Decodable, Sendable {
        var result: WatchResult?
        var error: StreamError?
    }

    struct RangeRequest: Encodable, Sendable {
        var key: String
        var range_end: String
        var limit: String? = nil
        var revision: String? = nil
    }

    struct WatchCreate: Encodable, Sendable {
        var key: String
        var range_end: String
        var start_revision: String
        var progress_notify = true
    }

    struct WatchRequest: Encodable, Sendable { var create_request: WatchCreate }

    struct AuthRequest: Encodable, Sendable {
        var name: String
        var password: String
    }

    struct AuthResponse: Decodable, Sendable { var token: String? }

    static func bytes(_ base64: String?) -> [UInt8]? {
        guard let base64 else { return [] }
        return Data(base64Encoded: base64).map { [UInt8]($0) }
    }

    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
}
