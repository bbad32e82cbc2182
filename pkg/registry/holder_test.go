package registry

import "testing"

func TestPIDHolders(t *testing.T) {
	if h := PIDHolder(12, 3456); h != "pid:12:3456" {
		t.Fatalf("PIDHolder = %q", h)
	}
	for _, tc := range []struct {
		holder string
		pid    int
		start  uint64
		want   bool
	}{
		{"pid:12:3456", 12, 0, true},
		{"pid:12:3456", 12, 3456, true},
		{"pid:12:3456", 12, 3457, false},
		{"pid:123:3456", 12, 0, false},
		{"pid:12:3456", 1, 0, false},
		{"conn:agent:12", 12, 0, false},
		{"registry", 12, 0, false},
		{"pid:12:", 12, 0, false},
		{"pid:12", 12, 0, false},
		{"pid:12:x", 12, 0, false},
	} {
		if got := IsPIDHolderOf(tc.holder, tc.pid, tc.start); got != tc.want {
			t.Errorf("IsPIDHolderOf(%q, %d, %d) = %v, want %v", tc.holder, tc.pid, tc.start, got, tc.want)
		}
	}
}

func TestConnAndPodHolders(t *testing.T) {
	h := ConnHolder("a1b2", 7)
	if inst, ok := ConnHolderInstance(h); h != "conn:a1b2:7" || !ok || inst != "a1b2" {
		t.Fatalf("ConnHolder = %q, instance %q %v", h, inst, ok)
	}
	if _, ok := ConnHolderInstance("pid:1:2"); ok {
		t.Fatal("a pid holder read as a connection's")
	}
	p := PodHolder("team-a", "reader", "uid-1")
	if ns, name, uid, ok := ParsePodHolder(p); !ok || ns != "team-a" || name != "reader" || uid != "uid-1" {
		t.Fatalf("ParsePodHolder(%q) = %q %q %q %v", p, ns, name, uid, ok)
	}
	if len(PodNamePrefix("team-a", "reader")) >= len(p) || p[:len(PodNamePrefix("team-a", "reader"))] != PodNamePrefix("team-a", "reader") {
		t.Fatalf("%q does not start with its name prefix", p)
	}
	for _, bad := range []string{"pod:team-a/reader", "conn:x:1", "registry"} {
		if _, _, _, ok := ParsePodHolder(bad); ok {
			t.Errorf("ParsePodHolder(%q) accepted", bad)
		}
	}
}

func TestPrefixesCollide(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"p:", "p:meta:", true}, {"p:meta:", "p:", true}, {"p:", "p:refs:x:", true}, {"t:", "t:reply:", true},
		{"p:", "p:", true}, {"tensor:", "tensor:node-a:", false}, {"tensor:node-1:", "tensor:node-10:", false},
		{"a:", "b:", false}, {"p:", "p:me", false},
	} {
		if got := PrefixesCollide(tc.a, tc.b); got != tc.want {
			t.Errorf("PrefixesCollide(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
