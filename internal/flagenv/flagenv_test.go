package flagenv

import (
	"flag"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		bad  bool
	}{
		{"0", 0, false}, {"512", 512, false}, {"64Mi", 64 << 20, false}, {"8Gi", 8 << 30, false},
		{"8G", 8e9, false}, {"1.5Gi", 3 << 29, false}, {"2k", 2000, false}, {"2Ki", 2048, false}, {"1e3", 1000, false},
		{"", 0, true}, {"-1", 0, true}, {"lots", 0, true}, {"9999999999T", 0, true}, {"8GiB", 0, true}, {"10B", 0, true},
		{"0.5", 0, true},
	} {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, bad=%v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestApplyEnv(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	a := fs.String("redis-url", "default", "")
	b := fs.String("socket", "default", "")
	t.Setenv("MEMCUDA_REDIS_URL", "from-env")
	t.Setenv("MEMCUDA_SOCKET", "from-env")
	if err := fs.Parse([]string{"--socket", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs); err != nil {
		t.Fatal(err)
	}
	if *a != "from-env" || *b != "from-flag" {
		t.Fatalf("redis-url=%q socket=%q: flags win over env, env over defaults", *a, *b)
	}
}
