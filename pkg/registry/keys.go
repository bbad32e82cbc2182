// Package registry is mem-cuda's Redis schema: one hash per tensor, a hash of
// reference holders per tensor, a sorted-set index of names, and the keys of
// the command queue. Every change of a refcount or a state is one Lua script,
// loaded once and run by SHA. docs/redis-protocol.md documents the schema.
package registry

import "strings"

// DefaultPrefix is the key prefix of the original design's schema.
const DefaultPrefix = "tensor:"

// Keys names every Redis key under one prefix. Several agents may share a
// Redis when their prefixes differ (the chart puts the node name in it).
type Keys struct {
	Prefix string
	Node   string
}

// Meta is the hash of one tensor.
func (k Keys) Meta(name string) string { return k.Prefix + "meta:" + name }

// Refs is the hash holder -> count of one tensor.
func (k Keys) Refs(name string) string { return k.Prefix + "refs:" + name }

// Index is the sorted set of names, scored by creation time in ms.
func (k Keys) Index() string { return k.Prefix + "index" }

// Names is the sorted set of names with score 0, in name order: lists
// page through it by prefix (ZRANGEBYLEX).
func (k Keys) Names() string { return k.Prefix + "names" }

// HeldBy is the set of names that references of a holder kind ("pid",
// "pod") may hold: the names GC and the pod sweep look at. A name may stay
// in it after its last such reference went; GC takes it out then.
func (k Keys) HeldBy(kind string) string { return k.Prefix + kind + "refs" }

// Cmd is the command list (tensor:cmd with the default prefix).
func (k Keys) Cmd() string { return k.Prefix + "cmd" }

// Processing is the list a node's agent moves commands into while it works on them.
func (k Keys) Processing() string { return k.Prefix + "processing:" + k.Node }

// Dead is the dead-letter list of malformed commands.
func (k Keys) Dead() string { return k.Prefix + "dead" }

// Req marks a request id as applied.
func (k Keys) Req(id string) string { return k.Prefix + "req:" + id }

// ReplyPrefix is the prefix every reply_to key must have.
func (k Keys) ReplyPrefix() string { return k.Prefix + "reply:" }

// Agent is the hash describing the node's running agent.
func (k Keys) Agent() string { return k.Prefix + "agent:" + k.Node }

// Epoch marks that Redis holds the agent's records: gone after a restart
// of Redis without its data.
func (k Keys) Epoch() string { return k.Prefix + "epoch" }

// Agents is the set of node names whose agents use this prefix.
func (k Keys) Agents() string { return k.Prefix + "agents" }

// PrefixesKey is the set, under a cluster-wide prefix, of the key prefixes of
// every agent sharing the Redis.
func PrefixesKey(clusterPrefix string) string { return clusterPrefix + "prefixes" }

// keyKinds are the parts that follow a prefix in keys that also hold a name.
var keyKinds = []string{"meta:", "refs:", "req:", "reply:", "processing:", "agent:"}

// PrefixesCollide reports whether two agents' prefixes can name the same
// key: when the longer is the shorter followed by a key kind ("p:" and
// "p:meta:" share p:meta:meta:x). Other prefixes that start alike ("tensor:"
// and "tensor:node-a:") cannot.
func PrefixesCollide(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	if a == b {
		return true
	}
	if !strings.HasPrefix(b, a) {
		return false
	}
	rest := b[len(a):]
	for _, k := range keyKinds {
		if strings.HasPrefix(rest, k) {
			return true
		}
	}
	return false
}
