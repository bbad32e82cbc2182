// Package flagenv gives every command-line flag an environment twin:
// --redis-url reads MEMCUDA_REDIS_URL when the flag is not set.
package flagenv

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return "MEMCUDA_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Apply sets every flag not given on the command line from its environment
// variable, and appends the variable's name to each flag's usage.
func Apply(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("$%s: %w", EnvName(f.Name), e)
			}
		}
	})
	return err
}

// Document appends "(env NAME)" to every flag's usage.
func Document(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) { f.Usage += " (env " + EnvName(f.Name) + ")" })
}

// Bytes is a flag.Value for sizes such as 512, 64MiB, 8GiB, 1.5G.
type Bytes uint64

func (b *Bytes) String() string { return strconv.FormatUint(uint64(*b), 10) }

// Set parses a size.
func (b *Bytes) Set(s string) error {
	n, err := ParseBytes(s)
	*b = Bytes(n)
	return err
}

// ParseBytes parses a byte size with an optional unit (K, M, G, T with or
// without "iB"/"B"; powers of 1024).
func ParseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	upper := strings.ToUpper(t)
	for _, u := range []struct {
		suffix string
		m      float64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(upper, u.suffix) {
			mult = u.m
			t = strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("bad size %q (want e.g. 512, 64MiB, 8GiB)", s)
	}
	return uint64(f * mult), nil
}
