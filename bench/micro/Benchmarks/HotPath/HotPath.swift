// The query path in pieces, against a snapshot of 1,000 services (3 instances each): decode, resolve, encode,
// and the whole path, on the fast path (pre-encoded templates) and on the general path. Each benchmark runs
// 1,000 operations per measured iteration, so the reported time and malloc count are per operation.
import Atomics
import Benchmark
import Dispatch
import Foundation
import Catalog
import DNSWire
import Gateway
import Logging
import Metrics
import NIOCore
import Prometheus

/// A snapshot of `count` services × 3 instances, as the catalog-file registry would build it, plus the same number
/// of dotted services (`go.micro.svc<N>`, go-micro's naming). Every instance has the tag `v2`.
func snapshot(services count: Int) -> CatalogSnapshot {
    var registrations: [Registration] = []
    for s in 0..<count {
        for i in 0..<3 {
            for (prefix, net) in [("", 10), ("go.micro.", 11)] {
                let json = #"{"Node": "\#(prefix)svc\#(s)-\#(i)", "Address": "\#(net).\#(s / 250).\#(s % 250).\#(i + 1)", "#
                    + #""Service": {"ID": "svc\#(s)-\#(i)", "Service": "\#(prefix)svc\#(s)", "Port": 8080, "Tags": ["v2"]}}"#
                registrations += try! RegistrationDecoder.decode(bytes: Array(json.utf8), path: "bench", defaultDatacenter: "dc1")
            }
        }
    }
    return CatalogSnapshot.build(registrations: registrations, zones: [], localDatacenter: "dc1", generation: 1)
}

/// What `dig svc500.service.consul SRV` sends: RD, EDNS(0) with a 1232-byte buffer.
func query(_ type: UInt16, name: String = "svc500.service.consul") -> [UInt8] {
    var h = DNSHeader(id: 0x1234)
    h.rd = true
    var packet = Message(header: h, questions: [Question(name: try! DNSName(name), type: type)]).encode()
    packet.writeBytes([0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0])
    packet.setInteger(UInt16(1), at: 10)
    return Array(packet.readableBytesView)
}

let benchmarks: @Sendable () -> Void = {
    // Other metrics go to Prometheus, as in the server; the query counters and histogram are the observer's own table.
    var factory = PrometheusMetricsFactory(registry: PrometheusCollectorRegistry())
    MetricsSystem.bootstrap(factory)
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .mallocCountTotal, .throughput], scalingFactor: .kilo,
                                           maxDuration: .seconds(2), maxIterations: 1_000)

    let store = SnapshotStore(snapshot(services: 1_000))
    let handler = QueryHandler(resolver: Resolver(configuration: ResolverConfiguration()), store: store,
                               logger: Logger(label: "bench"))
    let allocator = ByteBufferAllocator()
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)

    for (label, type) in [("A", RRType.a), ("SRV", RRType.srv)] {
        let bytes = query(type)
        let buffer = ByteBuffer(bytes: bytes)
        let question = Question(name: try! DNSName("svc500.service.consul"), type: type)
        let answer = handler.resolver.resolve(question, in: store.snapshot)
        let reply = ResponseEncoder.Reply(header: DNSHeader(id: 0x1234), question: question,
                                          edns: EDNS(udpSize: 1232, version: 0, dnssecOK: false), rcode: 0, udpSize: 1232)
        // Warm the templates.
        _ = handler.respond(to: buffer, transport: .udp, allocator: allocator)

        Benchmark("decode \(label): PlainQuery (fast)") { benchmark in
            bytes.withUnsafeBytes { raw in
                for _ in benchmark.scaledIterations { blackHole(PlainQuery.parse(raw)) }
            }
        }
        Benchmark("decode \(label): Query.parse (general)") { benchmark in
            for _ in benchmark.scaledIterations { blackHole(Query.parse(buffer)) }
        }
        Benchmark("resolve \(label): fast plan, 1k services") { benchmark in
            bytes.withUnsafeBytes { raw in
                for _ in benchmark.scaledIterations { blackHole(handler.fastPlan(raw, transport: .udp)) }
            }
        }
        Benchmark("resolve \(label): Resolver (general), 1k services") { benchmark in
            let snap = store.snapshot
            for _ in benchmark.scaledIterations { blackHole(handler.resolver.resolve(question, in: snap)) }
        }
        Benchmark("encode \(label): templates into a reused buffer (fast)") { benchmark in
            bytes.withUnsafeBytes { raw in
                let plan = handler.fastPlan(raw, transport: .udp)!
                for _ in benchmark.scaledIterations { blackHole(handler.writeFast(plan, packet: raw, into: out)) }
            }
        }
        Benchmark("encode \(label): ResponseEncoder (general)") { benchmark in
            for _ in benchmark.scaledIterations { blackHole(ResponseEncoder.encode(answer, reply: reply, limit: 1232, allocator: allocator)) }
        }
        Benchmark("query path \(label): bytes in, bytes out (mmsg engine)") { benchmark in
            bytes.withUnsafeBytes { raw in
                for _ in benchmark.scaledIterations {
                    blackHole(handler.answerFast(raw, into: out, transport: .udp, mayRecurse: { false }, client: { nil }))
                }
            }
        }
        Benchmark("query path \(label): into a new ByteBuffer (NIO engine)") { benchmark in
            for _ in benchmark.scaledIterations { blackHole(handler.respond(to: buffer, transport: .udp, allocator: allocator)) }
        }
        Benchmark("metrics \(label): QueryObserver.record (counters and histogram)") { benchmark in
            let observer = QueryObserver()
            bytes.withUnsafeBytes { raw in
                let plan = handler.fastPlan(raw, transport: .udp)!
                let length = handler.writeFast(plan, packet: raw, into: out)
                let response = UnsafeRawBufferPointer(start: out.baseAddress, count: length)
                for _ in benchmark.scaledIterations {
                    observer.record(query: raw, response: response, transport: .udp, started: 0, now: 30_000, client: "-")
                }
            }
        }
        Benchmark("query path \(label): general path") { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(handler.respondWithoutFastPath(to: buffer, transport: .udp, allocator: allocator))
            }
        }
    }

    // Contention: 1, 2 and 4 threads recording at once into the one process-wide table, as the UDP workers and
    // the event loops do. Each thread measures its own CPU time (CLOCK_THREAD_CPUTIME_ID), so the row is CPU ns
    // per record whatever the core count; on 2 cores, 4 threads still share cache lines two at a time.
    let a = query(RRType.a)
    for threads in [1, 2, 4] {
        Benchmark("metrics contention: QueryObserver.record, \(threads) thread\(threads == 1 ? "" : "s") at once",
                  configuration: .init(metrics: [.custom("CPU ns per record", useScalingFactor: false), .mallocCountTotal],
                                       maxDuration: .seconds(2), maxIterations: 50)) { benchmark in
            let observer = QueryObserver()
            let records = 200_000
            let cpu = ManagedAtomic<Int>(0)
            let started = ManagedAtomic<Int>(0)
            var workers: [Thread] = []
            let done = DispatchGroup()
            for _ in 0..<threads {
                done.enter()
                let t = Thread {
                    a.withUnsafeBytes { raw in
                        started.wrappingIncrement(ordering: .relaxed)
                        while started.load(ordering: .relaxed) < threads {}
                        var t0 = timespec(), t1 = timespec()
                        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0)
                        // The engine reads the clock itself (once per batch, once per answer): not recording's cost.
                        for i in 0..<records { observer.record(query: raw, response: raw, transport: .udp, started: 0, now: UInt64(i), client: "-") }
                        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1)
                        cpu.wrappingIncrement(by: (t1.tv_sec - t0.tv_sec) * 1_000_000_000 + (t1.tv_nsec - t0.tv_nsec), ordering: .relaxed)
                    }
                    done.leave()
                }
                workers.append(t)
            }
            for t in workers { t.start() }
            done.wait()
            benchmark.measurement(.custom("CPU ns per record", useScalingFactor: false), cpu.load(ordering: .relaxed) / (threads * records))
        }
    }

    // Nearest first and weighted first position (issue 24): the same plain A query, with `--locality zone` and a
    // client whose zone a --client-zone network gives, against services whose three instances sit in three zones
    // with weights 1, 2 and 3. Both must stay on the fast path with 0 mallocs.
    var zoned: [Registration] = []
    for s in 0..<1_000 {
        for i in 0..<3 {
            let json = #"{"Node": "svc\#(s)-\#(i)", "Address": "10.\#(s / 250).\#(s % 250).\#(i + 1)", "NodeMeta": {"zone": "zone-\#(i)", "region": "r"}, "#
                + #""Service": {"ID": "svc\#(s)-\#(i)", "Service": "svc\#(s)", "Port": 8080, "Weights": {"Passing": \#(i + 1), "Warning": 1}}}"#
            zoned += try! RegistrationDecoder.decode(bytes: Array(json.utf8), path: "bench", defaultDatacenter: "dc1")
        }
    }
    var localityConfig = ResolverConfiguration()
    localityConfig.locality.mode = .zone
    localityConfig.locality.clientZones = [(try! CIDR("10.1.0.0/16"), "zone-1")]
    let zonedStore = SnapshotStore(CatalogSnapshot.build(registrations: zoned, zones: [], localDatacenter: "dc1", generation: 1))
    let nearest = QueryHandler(resolver: Resolver(configuration: localityConfig), store: zonedStore, logger: Logger(label: "bench"))
    let weighted = QueryHandler(resolver: Resolver(configuration: ResolverConfiguration()), store: zonedStore, logger: Logger(label: "bench"))
    let clientAddress: [UInt8] = [10, 1, 2, 3]
    for (label, handler, client) in [("nearest first A (client zone from its address)", nearest, true), ("weighted first A", weighted, false)] {
        let bytes = query(RRType.a)
        bytes.withUnsafeBytes { raw in
            let located = { client ? clientAddress.withUnsafeBytes { handler.resolver.clientLocality(address: $0) } : nil }
            precondition(handler.fastPlan(raw, transport: .udp, client: located) != nil, "\(label) must take the fast path")
        }
        Benchmark("form \(label): svc500.service.consul") { benchmark in
            bytes.withUnsafeBytes { raw in
                clientAddress.withUnsafeBytes { address in
                    for _ in benchmark.scaledIterations {
                        // The closure is passed as the engines pass theirs: not stored, so nothing is allocated for it.
                        if let plan = handler.fastPlan(raw, transport: .udp, client: { client ? handler.resolver.clientLocality(address: address) : nil }) {
                            blackHole(handler.writeFast(plan, packet: raw, into: out))
                        }
                    }
                }
            }
        }
    }

    // Every name form, the whole query path of the mmsg engine (plan, then bytes into a reused buffer). Each must
    // take the fast path: 0 mallocs per query is the bar.
    let forms: [(String, String, UInt16)] = [
        ("plain A", "svc500.service.consul", RRType.a),
        ("plain SRV", "svc500.service.consul", RRType.srv),
        ("tag A", "v2.svc500.service.consul", RRType.a),
        ("datacenter A", "svc500.service.dc1.consul", RRType.a),
        ("RFC 2782 SRV", "_svc500._tcp.service.consul", RRType.srv),
        ("RFC 2782 tag SRV", "_svc500._v2.service.consul", RRType.srv),
        ("node A", "svc500-0.node.consul", RRType.a),
        ("addr A", "0a020001.addr.dc1.consul", RRType.a),
        ("dotted A (go.micro.svc500, 15 bytes)", "go.micro.svc500.service.consul", RRType.a),
        ("tag on dotted SRV", "v2.go.micro.svc500.service.consul", RRType.srv),
        ("long name A (go.micro.svc500 node, 17 bytes)", "go.micro.svc500-1.node.consul", RRType.a),
    ]
    for (label, name, type) in forms {
        let bytes = query(type, name: name)
        bytes.withUnsafeBytes { raw in
            precondition(handler.fastPlan(raw, transport: .udp) != nil, "\(name) must take the fast path")
        }
        Benchmark("form \(label): \(name)") { benchmark in
            bytes.withUnsafeBytes { raw in
                for _ in benchmark.scaledIterations {
                    if let plan = handler.fastPlan(raw, transport: .udp) { blackHole(handler.writeFast(plan, packet: raw, into: out)) }
                }
            }
        }
    }
}
