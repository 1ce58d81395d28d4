import ArgumentParser
import Catalog
import Registries
import Gateway

/// `signpost serve`: its flags, which are the settings. Every one is optional, so a flag not given leaves the
/// `--config` file's setting (`overFile()`, through the table `fileSettings`) or the default in place;
/// `ServeConfiguration` holds the defaults. Every boolean flag has a `--no-` form, so a file's `true` can be
/// turned off.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve DNS (the default command).")

    @Option(name: .long, help: ArgumentHelp("Address to serve on, over UDP and TCP. Repeatable. Port 0 picks a free port. Default 127.0.0.1:8600.", valueName: "HOST:PORT"))
    var listen: [String] = []

    @OptionGroup var catalogOptions: CatalogOptions

    @Option(name: .long, help: ArgumentHelp("A registry to watch: file:DIR, etcd:http://HOST:PORT[,…][?prefix=/services/], consul:http://HOST:PORT[?dc=&token=&stale=true&wait=5m]. Repeatable; catalogs are merged, earlier registries win conflicts.", valueName: "URL"))
    var registry: [String] = []

    @Option(name: .long, help: ArgumentHelp("Answer SERVFAIL for the domain once registry data is this stale (e.g. 10m). Default: unlimited.", valueName: "DURATION"))
    var maxStale: DurationSetting?

    @Option(name: .long, help: "The service domain. Default consul.")
    var domain: String?

    @Option(name: .long, help: ArgumentHelp("A second domain answered exactly like --domain (Consul's alt_domain).", valueName: "NAME"))
    var altDomain: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Serve only instances whose checks all pass (leave out warning ones too). Default off.")
    var onlyPassing: Bool?

    @Option(name: .long, help: ArgumentHelp("At most N instances per A, AAAA or SRV answer, walking round the whole set over successive queries; 0 (the default) for no limit (Consul's a_record_limit).", valueName: "N"))
    var answerLimit: Int?

    @Flag(name: .long, inversion: .prefixedNo, help: "Add each node's meta as TXT records to the additional section of SRV answers (Consul's enable_additional_node_meta_txt). Default off: some SRV parsers break on them.")
    var nodeMetaTxt: Bool?

    @Option(name: .long, help: ArgumentHelp("Service TTL, Consul style: 30s, or NAME=30s, or PREFIX*=30s. Repeatable. Default 0s.", valueName: "TTL"))
    var serviceTTL: [String] = []

    @Option(name: .long, help: ArgumentHelp("TTL for node and addr answers. Default 0s.", valueName: "DURATION"))
    var nodeTTL: DurationSetting?

    @Option(name: .long, help: ArgumentHelp("Load-balancing policy announced to gRPC clients in _grpc_config.<service> TXT records: round_robin, pick_first or none (the default). Service meta grpc_lb_policy overrides it.", valueName: "POLICY"))
    var grpcLbPolicy: GRPCLBPolicy?

    @Option(name: .long, help: "Answer order: cyclic (rotate by one per query, the default) or random (shuffle).")
    var order: AnswerOrder?

    @Option(name: .long, help: "Largest UDP response with EDNS, in bytes (512-65535). Default 1232.")
    var maxUDPSize: Int?

    @Option(name: .long, help: ArgumentHelp("Close idle TCP connections after this long. Default 10s.", valueName: "DURATION"))
    var tcpIdleTimeout: DurationSetting?

    @Option(name: .long, help: "TCP connections open at once; a new one beyond this closes the one quiet longest. Default 512.")
    var tcpMaxConnections: Int?

    @Option(name: .long, help: "Forwarded queries one TCP connection may have waiting; beyond this its reads pause. Default 32.")
    var tcpMaxInflight: Int?

    @Option(name: .long, help: "Log level: trace, debug, info (the default), notice, warning, error, critical.")
    var logLevel: String?

    @Option(name: .long, help: "Event loop threads and UDP workers, one UDP socket each on a fixed port. Default: one per core.")
    var threads: Int?

    @Option(name: .long, help: "UDP front end: mmsg (recvmmsg/sendmmsg threads, the default) or nio (a NIO channel per event loop).")
    var udpEngine: DNSServer.UDPEngine?

    @Option(name: .long, help: ArgumentHelp("Serve /health, /ready, /metrics, the status page /ui and /v1/* (read-only) over HTTP here; a bare PORT is 127.0.0.1:PORT. Off by default.", valueName: "HOST:PORT"))
    var admin: String?

    @Option(name: .long, help: ArgumentHelp("UDP responses per second per client network (/24, /56); 0 (the default) turns rate limiting off.", valueName: "N"))
    var rrlRate: Int?

    @Option(name: .long, help: ArgumentHelp("With --rrl-rate: every Nth limited response is sent truncated instead of dropped; 0 never. Default 2.", valueName: "N"))
    var rrlSlip: Int?

    @Option(name: .long, help: ArgumentHelp("Networks never rate limited. Repeatable; \"none\" for none. Default: loopback (it cannot be spoofed from outside).", valueName: "CIDR"))
    var rrlExempt: [String] = []

    @Option(name: .long, help: ArgumentHelp("Started as root: switch to this user once the ports are bound (so port 53 needs no root afterwards).", valueName: "NAME"))
    var user: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "Log every query (client, name, type, protocol, rcode, size, duration) at info level. Default off.")
    var queryLog: Bool?

    @Option(name: .long, help: ArgumentHelp("Forward other names to this resolver (port 53 by default), or over DNS over TLS with tls://IP[:853]@NAME (its certificate must name NAME). Repeatable. Default: the nameservers in /etc/resolv.conf, except Signpost's own addresses.", valueName: "HOST[:PORT]|tls://IP[:PORT]@NAME"))
    var upstream: [String] = []

    @Option(name: .long, help: ArgumentHelp("CA certificates (PEM) that tls:// upstreams' certificates must chain to. Default: the system's roots.", valueName: "FILE"))
    var upstreamCa: String?

    @Option(name: .long, help: ArgumentHelp("Close a pooled TCP or TLS connection to an upstream after this long with no query. Default 10s.", valueName: "DURATION"))
    var upstreamIdleTimeout: DurationSetting?

    @Flag(name: .long, inversion: .prefixedNo, help: "Forward names outside the domain and the zones (the default); --no-forward answers them REFUSED.")
    var forward: Bool?

    @Option(name: .long, help: ArgumentHelp("Split DNS: forward names in ZONE (and its reverse zones alike, e.g. 10.in-addr.arpa) to these resolvers instead of --upstream; the most specific zone wins. \"none\": answer REFUSED and never forward. Repeatable.", valueName: "ZONE=UPSTREAM[,…]|none"))
    var forwardZone: [String] = []

    @Flag(name: .long, inversion: .prefixedNo, help: "With forwarding on, answer the private and special-use zones here, never forwarding them: localhost, test, invalid, onion, home.arpa and the reverse zones of RFC 1918, 100.64/10, link-local, loopback and ULA (RFC 6303, RFC 6761; Unbound's defaults). A --forward-zone or a zone file covering one wins. Default on.")
    var localZones: Bool?

    @Option(name: .long, help: "Upstream order: sequential (the default), random or round_robin.")
    var upstreamPolicy: Forwarder.Policy?

    @Option(name: .long, help: ArgumentHelp("Give up on an upstream after this long. Default 2s.", valueName: "DURATION"))
    var upstreamTimeout: DurationSetting?

    @Option(name: .long, help: "Upstream queries in flight at most; beyond that, SERVFAIL at once. Default 1000.")
    var maxConcurrent: Int?

    @Option(name: .long, help: "Forwarding cache capacity, in entries (LRU). Default 10000.")
    var cacheSize: Int?

    @Option(name: .long, help: ArgumentHelp("Lowest TTL a cached positive answer gets. Default 0s.", valueName: "DURATION"))
    var cacheMinTTL: DurationSetting?

    @Option(name: .long, help: ArgumentHelp("Highest TTL a cached answer gets. Default 1d.", valueName: "DURATION"))
    var cacheMaxTTL: DurationSetting?

    @Option(name: .long, help: ArgumentHelp("Serve expired cache entries for this long when every upstream fails (RFC 8767). Default 1d.", valueName: "DURATION"))
    var staleTTL: DurationSetting?

    @Option(name: .long, help: ArgumentHelp("Clients allowed to have other names forwarded. Repeatable. Default: loopback, RFC 1918, RFC 6598, link-local, ULA.", valueName: "CIDR"))
    var allowRecursion: [String] = []

    @Option(name: .long, help: ArgumentHelp("Keep each registry's last-good catalog here, and serve it after a restart while the registry is unreachable (within --max-stale). Off by default.", valueName: "DIR"))
    var stateDir: String?

    @Option(name: .long, help: "Nearest-first answers: zone (the client's zone first, then its region, then the rest), region, or off (the default).")
    var locality: LocalityMode?

    @Option(name: .long, help: ArgumentHelp("Signpost's own zone: the zone of clients no --client-zone network names (the host's own resolver).", valueName: "ZONE"))
    var zone: String?

    @Option(name: .long, help: ArgumentHelp("Clients in this network are in this zone, for --locality. Repeatable; the most specific network wins.", valueName: "CIDR=ZONE"))
    var clientZone: [String] = []

    @Option(name: .long, help: ArgumentHelp("A meta key that gives an instance's zone or region when its registration has no Locality (service meta, then node meta). Repeatable. Default zone=zone, zone=topology.kubernetes.io/zone, region=region, region=topology.kubernetes.io/region.", valueName: "zone=KEY|region=KEY"))
    var localityKey: [String] = []

    @Option(name: .long, help: ArgumentHelp("With --locality: prefer the client's zone only while it holds at least N healthy instances. Default 1.", valueName: "N"))
    var localityMin: Int?

    @Option(name: .long, help: ArgumentHelp("With --locality: prefer the client's zone only while it holds at least this fraction of an even share of the healthy instances (all of them over the zones that hold any). Default 0.5.", valueName: "FRACTION"))
    var localityMinShare: Double?

    @Option(name: .long, help: ArgumentHelp("With --locality: believe EDNS Client Subnet options from resolvers in this network, and place their clients by the option's address. Repeatable. Default: none (the option is ignored, and echoed with scope 0).", valueName: "CIDR"))
    var ecsTrusted: [String] = []
}
