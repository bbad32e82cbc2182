// Package envtestenv starts a real kube-apiserver and etcd for tests
// (controller-runtime's envtest), built once by scripts/envtest-assets.sh.
package envtestenv

import (
	"os"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Start runs the API server for the test and stops it at cleanup. Tests
// fail (not skip) when the binaries are not configured: make test sets
// TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD.
func Start(t testing.TB) *rest.Config {
	t.Helper()
	if os.Getenv("TEST_ASSET_KUBE_APISERVER") == "" || os.Getenv("TEST_ASSET_ETCD") == "" {
		t.Fatal("envtest needs TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD: run `eval $(bash scripts/envtest-assets.sh)` (make test does)")
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	return cfg
}
