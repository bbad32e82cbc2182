// Package queueclient speaks the agent's Redis control plane: commands
// pushed on the command list and replies read from a per-request list. It
// needs no socket, only Redis (and, for the host backend, the same
// /dev/shm as the agent); MapHost opens a host tensor from its record.
package queueclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/procinfo"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
)

// Client sends commands to the agents of one registry prefix.
type Client struct {
	rdb  redis.UniversalClient
	keys registry.Keys
}

// New returns a client for the registry prefix.
func New(rdb redis.UniversalClient, prefix string) *Client {
	return &Client{rdb: rdb, keys: registry.Keys{Prefix: prefix}}
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Do pushes cmd (filling id and reply_to when empty) and waits for its reply.
func (q *Client) Do(ctx context.Context, cmd v1.Command) (*v1.Reply, error) {
	if cmd.ID == "" {
		cmd.ID = newID()
	}
	if cmd.ReplyTo == "" {
		cmd.ReplyTo = q.keys.ReplyPrefix() + cmd.ID
	}
	if cmd.PID != 0 && cmd.PID == os.Getpid() && cmd.PIDStart == 0 {
		// Lets the agent tell this process from another with the same pid
		// in its PID namespace.
		if st, err := procinfo.StartTime(cmd.PID); err == nil {
			cmd.PIDStart = st
		}
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	if err := q.rdb.RPush(ctx, q.keys.Cmd(), b).Err(); err != nil {
		return nil, registry.Wrap(err)
	}
	for {
		wait := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			wait = max(time.Until(dl), time.Millisecond)
		}
		res, err := q.rdb.BLPop(ctx, wait, cmd.ReplyTo).Result()
		if errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		if err != nil {
			return nil, registry.Wrap(err)
		}
		var r v1.Reply
		if err := json.Unmarshal([]byte(res[1]), &r); err != nil {
			return nil, fmt.Errorf("%w: bad reply: %w", errdefs.ErrInternal, err)
		}
		if r.Error != nil {
			return &r, errdefs.FromCode(r.Error.Code, r.Error.Message)
		}
		return &r, nil
	}
}

// HostMapping is a host tensor mapped straight from its shared-memory object.
type HostMapping struct {
	mem  []byte
	data []byte
}

// Bytes is the tensor's memory.
func (m *HostMapping) Bytes() []byte { return m.data }

// Close unmaps it.
func (m *HostMapping) Close() error { return unix.Munmap(m.mem) }

// MapHost maps a host-backend tensor from its registry record alone
// (ipc_handle names the shm_open object, offset and bytes locate the tensor):
// the Redis-only path.
func MapHost(info v1.Tensor) (*HostMapping, error) {
	if info.IPCMode != v1.ModeHost {
		return nil, errdefs.Invalid("tensor %q is %s, not host", info.Name, info.IPCMode)
	}
	if len(info.Pieces) > 0 {
		return nil, fmt.Errorf("%w: tensor %q lies in %d pieces, which this client does not map (the Python client does)",
			errdefs.ErrFailedPrecondition, info.Name, len(info.Pieces))
	}
	name := strings.TrimPrefix(info.IPCHandle, "/")
	if name == "" || strings.Contains(name, "/") {
		return nil, errdefs.Invalid("bad host ipc_handle %q", info.IPCHandle)
	}
	f, err := os.OpenFile(filepath.Join("/dev/shm", name), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", info.IPCHandle, err)
	}
	defer f.Close()
	end := info.Offset + info.Bytes
	if end > info.SegmentSize {
		return nil, errdefs.Invalid("tensor outside its segment")
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(info.SegmentSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return &HostMapping{mem: mem, data: mem[info.Offset:end:end]}, nil
}
