package cuda

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Child roles run in a re-executed test binary: CUDA IPC handles cannot be
// opened by the process that exported them.
func TestMain(m *testing.M) {
	if role := os.Getenv("MEMCUDA_CUDA_CHILD"); role != "" {
		if err := child(role); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func child(role string) error {
	d, err := GetDevice(0)
	if err != nil {
		return err
	}
	raw, _ := hex.DecodeString(os.Getenv("MEMCUDA_CUDA_HANDLE"))
	switch role {
	case "legacy-read":
		var h IPCMemHandle
		copy(h[:], raw)
		p, err := d.IPCOpenMemHandle(h)
		if err != nil {
			return err
		}
		buf := make([]byte, 4096)
		if err := d.CopyFromDevice(buf, p); err != nil {
			return err
		}
		if !bytes.Equal(buf, pattern(4096)) {
			return errors.New("child read other bytes than the parent wrote")
		}
		if err := d.CopyToDevice(p, []byte("child was here")); err != nil {
			return err
		}
		return d.IPCCloseMemHandle(p)
	case "event-wait":
		var h IPCEventHandle
		copy(h[:], raw)
		ev, err := d.OpenIPCEvent(h)
		if err != nil {
			return err
		}
		if err := ev.StreamWait(); err != nil {
			return err
		}
		return ev.Wait()
	}
	return fmt.Errorf("unknown role %q", role)
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + 1)
	}
	return b
}

func needGPU(t testing.TB) *Device {
	t.Helper()
	if err := Load(); err != nil {
		t.Skipf("no CUDA driver: %v", err)
	}
	if n, err := DeviceCount(); err != nil || n == 0 {
		t.Skipf("no CUDA device (%d, %v)", n, err)
	}
	d, err := GetDevice(0)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func runChild(t *testing.T, role string, handle []byte) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MEMCUDA_CUDA_CHILD="+role, "MEMCUDA_CUDA_HANDLE="+hex.EncodeToString(handle))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child %s: %v\n%s", role, err, out)
	}
}

func TestLoadReportsMissingDriver(t *testing.T) {
	err := Load()
	if err == nil {
		t.Skip("a CUDA driver is present")
	}
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "libcuda") {
		t.Fatalf("Load without a driver: %v, want ErrNoDriver naming libcuda", err)
	}
	if _, err := DeviceCount(); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("DeviceCount without a driver: %v", err)
	}
	if _, err := GetDevice(0); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("GetDevice without a driver: %v", err)
	}
}

func TestFormatUUID(t *testing.T) {
	b, _ := hex.DecodeString("5a4b2e1c00001111222233334444555f")
	if got := FormatUUID(b); got != "GPU-5a4b2e1c-0000-1111-2222-33334444555f" {
		t.Fatal(got)
	}
}

func TestErrorIs(t *testing.T) {
	e := &Error{Func: "cuMemCreate", Code: 2, Name: "CUDA_ERROR_OUT_OF_MEMORY", Message: "out of memory"}
	if !errors.Is(e, ErrOutOfMemory) || errors.Is(e, ErrNotReady) {
		t.Fatal("errors.Is must match on the CUresult code")
	}
	if !strings.Contains(e.Error(), "cuMemCreate") || !strings.Contains(e.Error(), "CUDA_ERROR_OUT_OF_MEMORY") {
		t.Fatal(e.Error())
	}
}

func TestDeviceInfo(t *testing.T) {
	d := needGPU(t)
	uuid, err := d.UUID()
	if err != nil || !regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(uuid) {
		t.Fatalf("UUID %q %v", uuid, err)
	}
	bus, err := d.PCIBusID()
	if err != nil || bus == "" {
		t.Fatalf("PCI bus id %q %v", bus, err)
	}
	name, _ := d.Name()
	total, err := d.TotalMem()
	if err != nil || total < 1<<30 {
		t.Fatalf("total %d %v", total, err)
	}
	free, total2, err := d.MemInfo()
	if err != nil || free == 0 || total2 != total {
		t.Fatalf("MemInfo %d/%d %v", free, total2, err)
	}
	vmm, _ := d.Attribute(AttrVirtualMemoryManagementSupported)
	fdok, _ := d.Attribute(AttrHandleTypePosixFDSupported)
	g, err := d.Granularity(false)
	if err != nil || g == 0 || g&(g-1) != 0 {
		t.Fatalf("granularity %d %v", g, err)
	}
	v, _ := DriverVersion()
	t.Logf("%s %s %s, %d MiB, driver CUDA %d, vmm=%d posix-fd=%d, granularity %d", name, uuid, bus, total>>20, v, vmm, fdok, g)
}

func TestVMMExportImport(t *testing.T) {
	d := needGPU(t)
	g, err := d.Granularity(false)
	if err != nil {
		t.Fatal(err)
	}
	size := 2 * g
	h, err := d.MemCreate(size)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := d.ExportFD(h)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	p1, err := d.Map(h, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Memset(p1, 0, size); err != nil {
		t.Fatal(err)
	}
	if err := d.CopyToDevice(p1+DevicePtr(g), pattern(8192)); err != nil {
		t.Fatal(err)
	}
	// Import the fd as a client would, release the original handle: the
	// mappings keep the memory.
	h2, err := d.ImportFD(fd)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := d.Map(h2, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.MemRelease(h); err != nil {
		t.Fatal(err)
	}
	if err := d.MemRelease(h2); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	if err := d.CopyFromDevice(buf, p2+DevicePtr(g)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, pattern(8192)) || p1 == p2 {
		t.Fatal("the second mapping does not show the first one's bytes")
	}
	if err := d.Unmap(p1, size); err != nil {
		t.Fatal(err)
	}
	if err := d.CopyFromDevice(buf[:16], p2); err != nil {
		t.Fatalf("memory gone while still mapped: %v", err)
	}
	if err := d.Unmap(p2, size); err != nil {
		t.Fatal(err)
	}
}

func TestLegacyIPCAcrossProcesses(t *testing.T) {
	d := needGPU(t)
	p, err := d.MemAlloc(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.MemFree(p)
	if err := d.CopyToDevice(p, pattern(4096)); err != nil {
		t.Fatal(err)
	}
	h, err := d.IPCGetMemHandle(p)
	if err != nil {
		t.Fatal(err)
	}
	runChild(t, "legacy-read", h[:])
	buf := make([]byte, 14)
	if err := d.CopyFromDevice(buf, p); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "child was here" {
		t.Fatalf("parent sees %q, not the child's write", buf)
	}
}

func TestIPCEventAcrossProcesses(t *testing.T) {
	d := needGPU(t)
	ev, err := d.NewIPCEvent()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Destroy()
	if err := ev.Record(); err != nil {
		t.Fatal(err)
	}
	h, err := ev.Handle()
	if err != nil {
		t.Fatal(err)
	}
	runChild(t, "event-wait", h[:])
	done, err := ev.Done()
	if err != nil || !done {
		t.Fatalf("event done=%v err=%v", done, err)
	}
}
