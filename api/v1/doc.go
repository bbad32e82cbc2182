// Package v1 is version 1 of the wire protocol of the agent's client socket.
//
// # Transport
//
// A Unix stream socket (default /run/memcuda/agent.sock). The client sends
// request frames; the agent answers each with one response frame carrying the
// request's id, in order. A connection is a lease: every reference taken
// through it is dropped when it closes.
//
// # Frame
//
//	offset size  field
//	0      4     magic "MCU1"
//	4      1     protocol version (1)
//	5      1     kind: 1 request, 2 response
//	6      1     number of file descriptors attached (0..8)
//	7      1     reserved, 0
//	8      4     body length in bytes, big-endian, at most MaxBody
//	12     n     body: one JSON object, UTF-8, no insignificant white space
//
// Descriptors travel as SCM_RIGHTS ancillary data on the same sendmsg as the
// frame's first byte. The response's "fds" field lists the segment ids they
// belong to, in order. The agent sends a segment's descriptor once per
// connection: later responses naming the same segment_id carry none, and the
// client reuses what it received (or maps it again from its kept descriptor).
//
// # Bodies
//
// Request and Response below, encoded by encoding/json with the struct field
// order and omitempty rules shown. testdata/vectors.json pins the exact bytes;
// every client must encode requests to those bytes and decode responses from
// them.
package v1
