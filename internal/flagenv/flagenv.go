// Package flagenv gives every command-line flag an environment twin:
// --redis-url reads MEMCUDA_REDIS_URL when the flag is not set.
package flagenv

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
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

// Bytes is a flag.Value for a byte size written as a Kubernetes quantity,
// as the chart's values are: 512, 64Mi, 8Gi (binary), 8G (decimal: 8e9).
type Bytes uint64

func (b *Bytes) String() string { return strconv.FormatUint(uint64(*b), 10) }

// Set parses a size.
func (b *Bytes) Set(s string) error {
	n, err := ParseBytes(s)
	*b = Bytes(n)
	return err
}

// ParseBytes parses a byte size written as a Kubernetes quantity (Ki, Mi,
// Gi, Ti are powers of 1024; k, M, G, T powers of 1000).
func ParseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	q, err := resource.ParseQuantity(t)
	if err != nil {
		hint := ""
		if strings.HasSuffix(strings.ToUpper(t), "IB") || strings.HasSuffix(strings.ToUpper(t), "B") {
			hint = " (Kubernetes quantities have no B: 8Gi for 8 GiB, 8G for 8e9 bytes)"
		}
		return 0, fmt.Errorf("bad size %q: want a Kubernetes quantity such as 512, 64Mi, 8Gi or 8G%s", s, hint)
	}
	n := q.Value() // rounded up: a fraction of a byte is refused below
	if q.Sign() < 0 || n > 1<<62 || resource.NewQuantity(n, q.Format).Cmp(q) != 0 {
		return 0, fmt.Errorf("bad size %q: want a whole, non-negative number of bytes", s)
	}
	return uint64(n), nil
}
