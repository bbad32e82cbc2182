package podident

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseLayouts(t *testing.T) {
	const uid = "4e2f8c2a-1b3d-4c5e-9f60-7a8b9c0d1e2f"
	const ctr = "3f1e2d3c4b5a69788796a5b4c3d2e1f0011223344556677889900aabbccddeef"
	for _, tc := range []struct {
		file     string
		uid, ctr string
	}{
		{"containerd-systemd-v2.txt", uid, ctr},
		{"containerd-cgroupfs-v1.txt", uid, ctr},
		{"crio-systemd-v2-guaranteed.txt", uid, ctr},
		{"docker-systemd-v1.txt", uid, ctr},
		{"kind-nested-v2.txt", uid, ctr},
		{"host-systemd-v2.txt", "", ""},
		{"host-v1.txt", "", ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			p := Parse(string(b))
			if p.UID != tc.uid || p.Container != tc.ctr {
				t.Fatalf("got %+v, want uid %q container %q", p, tc.uid, tc.ctr)
			}
		})
	}
}

func TestOfPIDSelf(t *testing.T) {
	if _, err := OfPID(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if _, err := OfPID(-1); err == nil {
		t.Fatal("no error for a bad pid")
	}
}
