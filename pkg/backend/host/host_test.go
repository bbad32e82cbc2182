package host_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/memcuda/memcuda/pkg/backend/host"
)

// The host is one device whose total is the size of the file system that
// holds the objects, also when it is read again within the reuse window.
func TestDevicesTotalIsTheFileSystemSize(t *testing.T) {
	dir := t.TempDir()
	b := host.New("p:", "inst", host.WithDir(dir))
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	want := st.Blocks * uint64(st.Bsize)
	for i := range 3 {
		devs := b.Devices()
		if len(devs) != 1 || devs[0].Index != 0 || devs[0].Total != want || want == 0 {
			t.Fatalf("call %d: devices %+v, want one of index 0 with total %d", i, devs, want)
		}
	}
	// A directory that does not exist has no size.
	if got := host.New("p:", "inst", host.WithDir(dir+"/missing")).Devices()[0].Total; got != 0 {
		t.Fatalf("total of a missing directory: %d, want 0", got)
	}
}
