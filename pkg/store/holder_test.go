package store_test

import (
	"testing"

	"github.com/memcuda/memcuda/pkg/store"
)

func TestIsPIDHolderOf(t *testing.T) {
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
		if got := store.IsPIDHolderOf(tc.holder, tc.pid, tc.start); got != tc.want {
			t.Errorf("IsPIDHolderOf(%q, %d, %d) = %v, want %v", tc.holder, tc.pid, tc.start, got, tc.want)
		}
	}
}
