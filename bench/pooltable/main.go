// Command pooltable reads `go test -bench` output of pkg/pool and prints the
// median ns/op of each benchmark next to the map-based baseline of the same
// size, measured in the same run.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var line = regexp.MustCompile(`^Benchmark(\w+)/(\S+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op`)

func median(xs []float64) float64 {
	sort.Float64s(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func main() {
	runs := map[string]map[string][]float64{}
	var sizes []string
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[4], 64)
		if runs[m[1]] == nil {
			runs[m[1]] = map[string][]float64{}
		}
		if _, seen := runs["AllocFree"][m[2]]; !seen && m[1] == "AllocFree" {
			sizes = append(sizes, m[2])
		}
		runs[m[1]][m[2]] = append(runs[m[1]][m[2]], v)
	}
	if len(sizes) == 0 {
		fmt.Fprintln(os.Stderr, "no pool benchmark lines on stdin")
		os.Exit(1)
	}
	fmt.Println("| alloc+free pair | pool median ns | map baseline median ns | pool / baseline | runs |")
	fmt.Println("| --- | --- | --- | --- | --- |")
	for _, s := range sizes {
		p, b := runs["AllocFree"][s], runs["MapBaselineAllocFree"][s]
		if len(b) == 0 {
			continue
		}
		mp, mb := median(append([]float64{}, p...)), median(append([]float64{}, b...))
		fmt.Printf("| %s | %.0f | %.0f | %.1fx | %d |\n", strings.TrimSpace(s), mp, mb, mp/mb, len(p))
	}
}
