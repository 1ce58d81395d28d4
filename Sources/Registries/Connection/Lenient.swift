/// One element of a registry's list that may not decode: then `wrappedValue` is nil and `problem` says why, and
/// the other elements still decode. The watcher logs and counts what it skipped.
struct Lenient<Value: Decodable>: Decodable {
    var wrappedValue: Value?
    var problem: String?

    init(from decoder: any Decoder) throws {
        do { wrappedValue = try Value(from: decoder) } catch {
            problem = RegistryConnection.short(error)
        }
    }
}

extension Lenient: Sendable where Value: Sendable {}
