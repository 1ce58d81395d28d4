import Catalog
/// Nodes named by a registry's instances, with how many instances name each, so a node entry exists exactly
/// while some instance names it. Used by the etcd and Consul watchers.
struct NodeReferences {
    private var refs: [CatalogSnapshot.NodeKey: (node: Node, count: Int)] = [:]

    /// Every node currently named.
    var nodes: [CatalogSnapshot.NodeKey: Node] { refs.mapValues(\.node) }

    func node(_ key: CatalogSnapshot.NodeKey) -> Node? { refs[key]?.node }

    static func key(_ node: Node) -> CatalogSnapshot.NodeKey {
        CatalogSnapshot.NodeKey(name: node.name, datacenter: node.datacenter)
    }

    /// Counts one more instance naming `node`; true if the node's entry appeared or changed.
    /// Instances without a node name (etcd values without `Node`) are not counted.
    @discardableResult
    mutating func retain(_ node: Node) -> Bool {
        guard !node.name.isEmpty else { return false }
        let key = Self.key(node)
        let old = refs[key]
        refs[key] = (node, (old?.count ?? 0) + 1)
        return old == nil || old!.node != node
    }

    /// Counts one instance fewer; true if the node's entry went away.
    @discardableResult
    mutating func release(_ node: Node) -> Bool {
        guard !node.name.isEmpty else { return false }
        let key = Self.key(node)
        guard let old = refs[key] else { return false }
        if old.count <= 1 {
            refs[key] = nil
            return true
        }
        refs[key] = (old.node, old.count - 1)
        return false
    }

    mutating func removeAll() { refs = [:] }
}
