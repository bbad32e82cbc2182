// Package host is the CPU twin of the vmm backend: segments are POSIX
// shared-memory objects (the files of /dev/shm, which is what shm_open
// creates on Linux), shared with clients as file descriptors over the agent's
// socket, or by name from the registry.
package host

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// ShmDir is where Linux keeps POSIX shared-memory objects.
const ShmDir = "/dev/shm"

// objectMode is the objects' permission bits: the agent's group (the
// socket's) may map them from their records.
const objectMode = 0o660

// Backend makes shared-memory segments named memcuda.<scope>.<instance>.<n>,
// where scope is derived from the registry prefix, so that a restarted agent
// finds its predecessor's objects and no two agents' objects collide.
type Backend struct {
	dir      string
	scope    string
	instance string
	seq      atomic.Uint64
	log      *slog.Logger
	lock     *os.File // held while this agent owns the scope's objects (Claim)
	keep     atomic.Bool
	// The file system's size and when it was read (Devices).
	totalBytes atomic.Uint64
	totalAt    atomic.Int64
}

// Option configures a Backend.
type Option func(*Backend)

// WithDir puts the objects in dir instead of /dev/shm (tests only: clients of
// the Redis-only path look in /dev/shm).
func WithDir(dir string) Option { return func(b *Backend) { b.dir = dir } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(b *Backend) { b.log = l } }

// Scope turns a registry prefix into the short tag used in object names.
func Scope(prefix string) string {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	return fmt.Sprintf("%08x", h.Sum32())
}

// New returns a host backend for the agent instance, scoped by the registry
// prefix.
func New(prefix, instance string, opts ...Option) *Backend {
	b := &Backend{dir: ShmDir, scope: Scope(prefix), instance: instance, log: slog.Default()}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Mode implements backend.Backend.
func (b *Backend) Mode() v1.IPCMode { return v1.ModeHost }

// Devices implements backend.Backend: the host is one device, index 0.
func (b *Backend) Devices() []backend.Device {
	return []backend.Device{{Index: 0, Name: "host", Total: b.total()}}
}

// totalTTL is how long the shared-memory file system's size is reused:
// every create resolves its device, and a statfs each time was a large
// part of a create's own work. A resized mount shows within it.
const totalTTL = time.Second

// total is the size of the file system holding the objects (0 when it
// cannot be read), read again once totalTTL passed.
func (b *Backend) total() uint64 {
	now := time.Now().UnixNano()
	if at := b.totalAt.Load(); at != 0 && now-at < int64(totalTTL) {
		return b.totalBytes.Load()
	}
	var total uint64
	var st unix.Statfs_t
	if unix.Statfs(b.dir, &st) == nil {
		total = st.Blocks * uint64(st.Bsize)
	}
	b.totalBytes.Store(total)
	b.totalAt.Store(now)
	return total
}

// Granularity implements backend.Backend.
func (b *Backend) Granularity(int) uint64 { return uint64(os.Getpagesize()) }

// Claim makes this agent the owner of its scope's objects on this host: an
// exclusive lock (flock) on a file beside them, which the kernel drops when
// the process dies. It fails while another live agent holds it: two agents
// of one prefix on a host would take each other's objects.
func (b *Backend) Claim() error {
	path := filepath.Join(b.dir, "memcuda-lock."+b.scope)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open the lock of this prefix's shared memory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: another agent (%s) serves this registry prefix on this host (its shared memory %s); "+
				"give each agent its own --redis-prefix", errdefs.ErrFailedPrecondition, strings.TrimSpace(string(owner)), path)
		}
		return fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d, instance %s", os.Getpid(), b.instance)
	}
	b.lock = f
	return nil
}

// ClaimWith makes this agent the owner of its scope's objects with a lock
// file a predecessor handed over (its flock goes with the descriptor).
func (b *Backend) ClaimWith(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("the handed-over lock of this prefix's shared memory: %w", err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(fmt.Sprintf("pid %d, instance %s", os.Getpid(), b.instance)), 0)
	}
	b.lock = f
	return nil
}

// Lock is the scope's lock file, to hand over to a successor.
func (b *Backend) Lock() *os.File { return b.lock }

// Keep implements backend.Keeper: from now on a released segment is
// unmapped and closed here, and its object stays for the next instance.
func (b *Backend) Keep() { b.keep.Store(true) }

// RemoveStale unlinks the objects of this scope left by other (dead)
// instances that keep does not want, and returns their names. It needs the
// scope claimed: the objects of a live agent are never removed.
func (b *Backend) RemoveStale(keep func(id string) bool) ([]string, error) {
	if b.lock == nil {
		return nil, fmt.Errorf("%w: remove stale shared memory without holding the prefix's lock", errdefs.ErrFailedPrecondition)
	}
	matches, err := filepath.Glob(filepath.Join(b.dir, "memcuda."+b.scope+".*"))
	if err != nil {
		return nil, err
	}
	var removed []string
	own := "memcuda." + b.scope + "." + b.instance + "."
	for _, m := range matches {
		if strings.HasPrefix(filepath.Base(m), own) || keep(filepath.Base(m)) {
			continue
		}
		if err := os.Remove(m); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, err
		}
		removed = append(removed, filepath.Base(m))
	}
	return removed, nil
}

// NewSegment implements backend.Backend.
func (b *Backend) NewSegment(_ context.Context, device int, size uint64) (backend.Segment, error) {
	if device != 0 {
		return nil, errdefs.Invalid("host backend has only device 0, not %d", device)
	}
	name := fmt.Sprintf("memcuda.%s.%s.%d", b.scope, b.instance, b.seq.Add(1))
	path := filepath.Join(b.dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, objectMode)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	// Creation mode is masked by umask; clients of the Redis-only path need the full mode.
	_ = unix.Fchmod(fd, objectMode)
	fail := func(err error) (backend.Segment, error) {
		unix.Close(fd)
		os.Remove(path)
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
			err = fmt.Errorf("%w: %w", errdefs.ErrOutOfMemory, err)
		}
		return nil, err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(fmt.Errorf("size %s to %d bytes: %w", path, size, err))
	}
	// Reserve the pages now so a full /dev/shm fails here, not with SIGBUS later.
	if err := unix.Fallocate(fd, 0, 0, int64(size)); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return fail(fmt.Errorf("reserve %d bytes for %s: %w", size, path, err))
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("map %s: %w", path, err))
	}
	return &Segment{name: name, path: path, fd: fd, mem: mem, size: size, keep: &b.keep}, nil
}

// OpenSegment implements backend.Reopener: the object of a predecessor of
// this scope, which must have the recorded size.
func (b *Backend) OpenSegment(_ context.Context, device int, id string, size uint64) (backend.Segment, error) {
	if err := b.checkID(device, id); err != nil {
		return nil, err
	}
	path := filepath.Join(b.dir, id)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: shared-memory object %s is gone", errdefs.ErrNotFound, path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return b.mapSegment(id, fd, size)
}

// ImportSegment implements backend.Importer: a descriptor of one of this
// scope's objects (handed over by a predecessor). The segment keeps fd.
func (b *Backend) ImportSegment(_ context.Context, device int, id string, size uint64, fd int) (backend.Segment, error) {
	if err := b.checkID(device, id); err != nil {
		return nil, err
	}
	return b.mapSegment(id, fd, size)
}

func (b *Backend) checkID(device int, id string) error {
	if device != 0 {
		return errdefs.Invalid("host backend has only device 0, not %d", device)
	}
	if !strings.HasPrefix(id, "memcuda."+b.scope+".") || strings.ContainsAny(id, "/\x00") {
		return errdefs.Invalid("segment %q is not a shared-memory object of this registry prefix", id)
	}
	return nil
}

// mapSegment maps the object fd of id after checking its size; it closes
// fd on failure.
func (b *Backend) mapSegment(id string, fd int, size uint64) (backend.Segment, error) {
	path := filepath.Join(b.dir, id)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Size) != size {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: shared-memory object %s has %d bytes, its records say %d", errdefs.ErrFailedPrecondition, path, st.Size, size)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	return &Segment{name: id, path: path, fd: fd, mem: mem, size: size, keep: &b.keep}, nil
}

// Close implements backend.Backend: the scope's lock goes. Segments are
// released by their pools.
func (b *Backend) Close() error {
	if b.lock == nil {
		return nil
	}
	err := b.lock.Close()
	b.lock = nil
	return err
}

// Segment is one shared-memory object, mapped in the agent.
type Segment struct {
	name string
	path string
	fd   int
	mem  []byte
	size uint64
	keep *atomic.Bool // the backend keeps its objects for the next instance
}

// ID implements backend.Segment.
func (s *Segment) ID() string { return s.name }

// Handle implements backend.Segment: the shm_open name of the object.
func (s *Segment) Handle() string { return "/" + s.name }

// FD implements backend.Segment.
func (s *Segment) FD() int { return s.fd }

// Size implements pool.Segment.
func (s *Segment) Size() uint64 { return s.size }

// Bytes is the agent's own mapping of the segment.
func (s *Segment) Bytes() []byte { return s.mem }

// Zero implements backend.Segment.
func (s *Segment) Zero(_ context.Context, off, n uint64) error {
	if off+n > s.size {
		return fmt.Errorf("zero [%d,%d) outside segment of %d bytes", off, off+n, s.size)
	}
	clear(s.mem[off : off+n])
	return nil
}

// Release implements pool.Segment: unmap, close and unlink (not unlinked
// once the backend keeps its objects). Clients that still map the object
// keep their pages until they unmap.
func (s *Segment) Release() error {
	err := errors.Join(unix.Munmap(s.mem), unix.Close(s.fd))
	if s.keep.Load() {
		return err
	}
	if rmErr := os.Remove(s.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}
