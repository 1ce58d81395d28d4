import DNSWire
import Foundation
import FuzzChecks
import NIOCore
import TestSupport
import Testing

/// Our codec against libldns, in both directions.
@Suite("Differential against ldns")
struct DifferentialTests {
    /// ldns parses what we encode, and agrees on header flags, counts and every record.
    @Test func ldnsReadsOurEncoding() throws {
        let wire = Array(CodecTests.sample.encode().readableBytesView)
        let parsed = try #require(LDNS.parse(wire))
        let ours = try Message(from: ByteBuffer(bytes: wire))
        assertAgree(parsed, ours)
    }

    /// We parse what ldns encodes (with its own compression) into the same records.
    @Test func weReadLDNSEncoding() throws {
        let wire = LDNS.build(
            id: 77, question: "web.service.consul. IN SRV",
            answers: [
                "web.service.consul. 30 IN SRV 1 10 8080 web-1.node.dc1.consul.",
                "web.service.consul. 30 IN SRV 1 1 9090 web-2.node.dc1.consul.",
                "web.service.consul. 30 IN TXT \"a b\" \"c\"",
                "web.service.consul. 30 IN MX 10 mail.service.consul.",
            ],
            authority: ["consul. 0 IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0", "consul. 0 IN NS ns.consul."],
            additional: ["web-1.node.dc1.consul. 30 IN A 192.0.2.1", "web-2.node.dc1.consul. 30 IN AAAA 2001:db8::2"])
        let ours = try Message(from: ByteBuffer(bytes: wire))
        assertAgree(try #require(LDNS.parse(wire)), ours)
        #expect(ours.answers.count == 4)
        #expect(ours.additional.map(\.type) == [RRType.a, RRType.aaaa])
    }

    /// Golden client queries: both accept, with the same fields.
    @Test func goldenQueriesAgree() throws {
        for hex in Golden.all {
            let wire = bytes(hex: hex)
            let parsed = try #require(LDNS.parse(wire))
            let ours = try Message(from: ByteBuffer(bytes: wire))
            assertAgree(parsed, ours)
        }
    }

    /// Accept/reject agreement on the malformed table and on random mutations of real packets.
    /// Known, deliberate differences are excluded and listed in docs/development.md.
    @Test func acceptRejectAgreesOnMutations() throws {
        var rng = SeededGenerator(seed: 0x5167_4E05)
        var corpus: [[UInt8]] = Golden.all.map { bytes(hex: $0) } + [Array(CodecTests.sample.encode().readableBytesView)]
        for _ in 0..<3000 {
            var p = corpus[Int(rng.next() % UInt64(min(corpus.count, 5)))]
            guard !p.isEmpty else { continue }
            switch rng.next() % 3 {
            case 0: p[Int(rng.next() % UInt64(p.count))] = UInt8(truncatingIfNeeded: rng.next())
            case 1: p.removeLast(Int(rng.next() % UInt64(p.count)))
            default: p.insert(UInt8(truncatingIfNeeded: rng.next()), at: Int(rng.next() % UInt64(p.count)))
            }
            corpus.append(p)
        }
        var compared = 0
        var tolerated = 0
        for packet in corpus {
            switch differential(packet) {
            case .compared: compared += 1
            case .tolerated: tolerated += 1
            case .bothRejected: break
            }
        }
        #expect(compared > 100, "too few packets accepted by both to mean anything")
        #expect(tolerated < corpus.count / 20, "deliberate differences should be rare")
    }


    enum Agreement { case compared, tolerated, bothRejected }

    /// Our parser against ldns_wire2pkt on one packet: both reject, or both accept with the same fields, or
    /// they differ in one of the deliberate, documented ways (and nothing else).
    func differential(_ packet: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> Agreement {
        let ldns = LDNS.parse(packet)
        let ours = try? Message(from: ByteBuffer(bytes: packet))
        // Deliberate differences (listed in docs/development.md), and nothing else, are tolerated:
        // we reject forward pointers, names in RDATA that run past RDLENGTH, and bytes left over
        // after typed RDATA; ldns rejects RDATA of types it knows that we keep opaque (RFC 3597).
        if ldns != nil, ours == nil {
            let reason = rejectionReason(packet)
            let rdataName = ["NS.nsdname", "CNAME.cname", "PTR.ptrdname", "MX.exchange", "SRV.target", "SOA.mname", "SOA.rname"]
            let deliberate = reason.map {
                $0.kind == .forwardPointer || ($0.kind == .badValue && $0.field.hasSuffix(".length"))
                    || ($0.kind == .truncated && rdataName.contains($0.field))
            } ?? false
            #expect(deliberate, "ldns accepted a packet we reject (\(String(describing: reason))): \(packet.map(format2).joined())",
                    sourceLocation: sourceLocation)
            return .tolerated
        }
        if ldns == nil, let ours {
            let typed: Set<UInt16> = [RRType.a, RRType.aaaa, RRType.ns, RRType.cname, RRType.ptr, RRType.mx, RRType.txt,
                                      RRType.srv, RRType.soa, RRType.opt]
            let all = ours.answers + ours.authority + ours.additional
            #expect(all.contains { !typed.contains($0.type) }, "ldns rejected a packet we accept: \(packet.map(format2).joined())",
                    sourceLocation: sourceLocation)
            return .tolerated
        }
        if let ldns, let ours {
            assertAgree(ldns, ours, sourceLocation: sourceLocation)
            return .compared
        }
        return .bothRejected
    }

    /// The fuzz corpus and every crash reproducer (fuzz/), replayed: ldns agrees as above, and the fuzz
    /// targets' own checks hold (parsers, the whole query path, fast against general).
    @Test func fuzzCorpusReplays() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var files: [URL] = []
        for dir in ["fuzz/corpus/parser", "fuzz/corpus/query", "fuzz/crashes"] {
            let url = root.appendingPathComponent(dir)
            files += ((try? FileManager.default.contentsOfDirectory(at: url, includingPropertiesForKeys: nil)) ?? [])
                .filter { !$0.lastPathComponent.hasPrefix(".") && $0.pathExtension != "md" }
        }
        #expect(files.count >= 40, "the corpus is missing: \(files.count) files")
        var agreements: [Agreement] = []
        for file in files {
            let packet = Array(try Data(contentsOf: file))
            agreements.append(differential(packet))
            let problems = packet.withUnsafeBytes { FuzzChecks.parser($0) + FuzzChecks.queryPath($0) }
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
        #expect(agreements.filter { $0 == .compared }.count >= 20)
    }

    private func rejectionReason(_ packet: [UInt8]) -> WireError? {
        do { _ = try Message(from: ByteBuffer(bytes: packet)); return nil } catch { return error as? WireError }
    }

    private func format2(_ b: UInt8) -> String { (b < 16 ? "0" : "") + String(b, radix: 16) }

    private func assertAgree(_ ldns: LDNS.Parsed, _ ours: Message, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(ldns.id == ours.header.id, sourceLocation: sourceLocation)
        #expect(ldns.flags.qr == ours.header.qr && ldns.flags.aa == ours.header.aa && ldns.flags.tc == ours.header.tc
                    && ldns.flags.rd == ours.header.rd && ldns.flags.ra == ours.header.ra, sourceLocation: sourceLocation)
        #expect(ldns.flags.opcode == UInt32(ours.header.opcode), sourceLocation: sourceLocation)
        #expect(ldns.flags.rcode == UInt32(ours.header.rcode), sourceLocation: sourceLocation)
        #expect(ldns.sections[0].count == ours.questions.count, sourceLocation: sourceLocation)
        for (l, q) in zip(ldns.sections[0], ours.questions) {
            var b = ByteBuffer()
            b.writeBytes(q.name.wire)
            b.writeMultipleIntegers(q.type, q.qclass)
            #expect(l == Array(b.readableBytesView), sourceLocation: sourceLocation)
        }
        let sections = [ours.answers, ours.authority, ours.additional.filter { $0.type != RRType.opt }]
        for (i, records) in sections.enumerated() {
            let theirs = ldns.sections[i + 1]
            #expect(theirs.count == records.count, "section \(i + 1)", sourceLocation: sourceLocation)
            for (l, r) in zip(theirs, records) {
                #expect(l == r.uncompressedWire, "section \(i + 1) \(r.name) type \(r.type)", sourceLocation: sourceLocation)
            }
        }
    }
}

