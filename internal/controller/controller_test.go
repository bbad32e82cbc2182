package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	"github.com/memcuda/memcuda/internal/envtestenv"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// newEnv runs a real kube-apiserver and etcd (envtest; `make
// envtest-assets` builds them and sets TEST_ASSET_KUBE_APISERVER and
// TEST_ASSET_ETCD), a real Redis, and the controller's manager for node-1,
// which start starts (one per test binary: controller-runtime refuses a
// second controller of the same name in a process).
func newEnv(t *testing.T) (client.Client, *store.Store, *PodReconciler, func()) {
	t.Helper()
	cfg := envtestenv.Start(t)
	srv := redistest.Start(t)
	reg := registry.New(srv.Client(), registry.Keys{Prefix: "k:", Node: "node-1"})
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := store.New(reg, host.New("k:", "inst", host.WithDir(t.TempDir())), "inst", "node-1")
	t.Cleanup(func() { st.Close() })
	mgr, r, err := NewManager(cfg, st, Options{Node: "node-1", RetryAfter: 200 * time.Millisecond, SweepEvery: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { mgr.Start(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, st, r, start
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pod(ns, name, node, annotation string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
	}
	if annotation != "" {
		p.Annotations = map[string]string{k8sapi.AnnotationTensors: annotation}
	}
	return p
}

func hasEvent(t *testing.T, c client.Client, ns, podName, reason string) bool {
	var list eventsv1.EventList
	if err := c.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range list.Items {
		if e.Regarding.Name == podName && e.Reason == reason {
			return true
		}
	}
	return false
}

func countEvents(t *testing.T, c client.Client, ns, podName, reason string) int {
	var list eventsv1.EventList
	if err := c.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Regarding.Name == podName && e.Reason == reason {
			n++
		}
	}
	return n
}

func status(t *testing.T, c client.Client, ns, name string) map[string]string {
	var p corev1.Pod
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &p); err != nil {
		return nil
	}
	out := map[string]string{}
	json.Unmarshal([]byte(p.Annotations[k8sapi.AnnotationStatus]), &out)
	return out
}

func TestPodAnnotationLifecycle(t *testing.T) {
	c, st, r, start := newEnv(t)
	lookupWaitsForTheCache(t, c, r, start)
	ctx := context.Background()
	for _, ns := range []string{"team-a", "team-b"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	refs := func(name string) int64 {
		info, err := st.Stat(ctx, name)
		if err != nil {
			return -1
		}
		return info.Refcount
	}

	// A pod that creates a tensor: registry + pod reference, Event, status.
	p1 := pod("team-a", "p1", "node-1", `[{"name":"w","dtype":"f32","shape":[2,3],"create":true}]`)
	if err := c.Create(ctx, p1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "team-a/w with the pod's reference", func() bool { return refs("team-a/w") == 2 })
	holders, _ := st.Holders(ctx, "team-a/w")
	if holders[PodHolder("team-a", "p1", p1.UID)] != 1 {
		t.Fatalf("holders %v", holders)
	}
	eventually(t, "TensorCreated event", func() bool { return hasEvent(t, c, "team-a", "p1", k8sapi.ReasonTensorCreated) })
	eventually(t, "status annotation", func() bool { return status(t, c, "team-a", "p1")["w"] == "ready" })
	info, _ := st.Stat(ctx, "team-a/w")
	if info.Tenant != "team-a" {
		t.Fatalf("tenant %q: tensors of a namespace must get their own pool", info.Tenant)
	}

	// Same tensor, other dtype: a mismatch, not a silent reuse.
	p2 := pod("team-a", "p2", "node-1", `[{"name":"w","dtype":"f16","shape":[2,3]}]`)
	c.Create(ctx, p2)
	eventually(t, "TensorMismatch event", func() bool { return hasEvent(t, c, "team-a", "p2", k8sapi.ReasonTensorMismatch) })
	if refs("team-a/w") != 2 {
		t.Fatalf("a mismatching pod took a reference (%d)", refs("team-a/w"))
	}

	// A missing tensor without create: unavailable until someone creates it.
	p3 := pod("team-a", "p3", "node-1", `[{"name":"later"}]`)
	c.Create(ctx, p3)
	eventually(t, "TensorUnavailable event", func() bool { return hasEvent(t, c, "team-a", "p3", k8sapi.ReasonTensorUnavailable) })
	// Updates of the pod reconcile it again (as the kubelet's status
	// updates do); the condition did not change, so no new Event.
	for i := 0; i < 5; i++ {
		var cur corev1.Pod
		if err := c.Get(ctx, types.NamespacedName{Namespace: "team-a", Name: "p3"}, &cur); err == nil {
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			cur.Labels["touch"] = fmt.Sprint(i)
			c.Update(ctx, &cur)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := countEvents(t, c, "team-a", "p3", k8sapi.ReasonTensorUnavailable); n != 1 {
		t.Fatalf("%d TensorUnavailable Events for one missing tensor, want 1", n)
	}
	if _, _, err := st.Create(ctx, store.CreateParams{Name: "team-a/later", DType: "u8", Shape: []int64{8}, Tenant: "team-a"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "p3 ready once the tensor exists", func() bool { return status(t, c, "team-a", "p3")["later"] == "ready" })

	// Pods of other nodes are not ours.
	c.Create(ctx, pod("team-a", "elsewhere", "node-2", `[{"name":"other","dtype":"f32","shape":[1],"create":true}]`))

	// Another namespace may open team-a's tensor only once team-a shares it.
	pb := pod("team-b", "reader", "node-1", `[{"name":"team-a/w","dtype":"f32","shape":[2,3]}]`)
	c.Create(ctx, pb)
	eventually(t, "TensorPermissionDenied event", func() bool { return hasEvent(t, c, "team-b", "reader", k8sapi.ReasonPermissionDenied) })
	var nsA corev1.Namespace
	c.Get(ctx, types.NamespacedName{Name: "team-a"}, &nsA)
	nsA.Annotations = map[string]string{k8sapi.AnnotationShareWith: "team-b"}
	if err := c.Update(ctx, &nsA); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the shared tensor held by team-b's pod", func() bool { return status(t, c, "team-b", "reader")["team-a/w"] == "ready" })
	if refs("team-a/w") != 3 {
		t.Fatalf("refcount %d, want registry + p1 + reader", refs("team-a/w"))
	}
	if _, err := st.Stat(ctx, "team-a/other"); err == nil {
		t.Fatal("a pod of another node got a tensor")
	}

	// Pod deletion drops its references.
	if err := c.Delete(ctx, p1, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "p1's reference dropped", func() bool { return refs("team-a/w") == 2 })

	// A reference of a pod that ended while the agent was down is swept.
	if _, _, err := st.Get(ctx, store.GetParams{Name: "team-a/w", Holder: PodHolder("team-a", "ghost", "0000")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ghost pod's reference swept", func() bool { return refs("team-a/w") == 2 })

	// A malformed annotation is reported, not retried forever.
	c.Create(ctx, pod("team-a", "bad", "node-1", `{"name":"x"}`))
	eventually(t, "InvalidTensorAnnotation event", func() bool { return hasEvent(t, c, "team-a", "bad", k8sapi.ReasonInvalidAnnotation) })
}

func TestParseAnnotation(t *testing.T) {
	if reqs, err := parseAnnotation(`[{"name":"w","dtype":"bf16","shape":[2,3],"create":true},{"name":"team-a/e"}]`); err != nil || len(reqs) != 2 {
		t.Fatalf("%+v %v", reqs, err)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"name":"x"}`, "JSON list"},
		{`[{"name":"a b"}]`, "characters"},
		{`[{"name":"ns/a b"}]`, "characters"},
		{`[{"name":"x","dtype":"f31","shape":[1]}]`, "unknown dtype"},
		{`[{"name":"x","dtype":"f32","shape":[-1]}]`, "negative"},
	} {
		if _, err := parseAnnotation(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseAnnotation(%s) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

// The agent accepts connections before its manager has started the cache
// (when it starts, and when it takes over its predecessor's socket in an
// upgrade): the socket's pod lookup waits for the cache instead of
// answering that the client's pod is not this node's.
// It starts the manager (start) while a lookup waits.
func lookupWaitsForTheCache(t *testing.T, c client.Client, r *PodReconciler, start func()) {
	t.Helper()
	ctx := context.Background()
	mine, other := pod("default", "early", "node-1", ""), pod("default", "elsewhere", "node-2", "")
	for _, p := range []*corev1.Pod{mine, other} {
		if err := c.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	type found struct {
		pod *corev1.Pod
		err error
	}
	got := make(chan found, 1)
	go func() {
		p, err := r.PodByUID(ctx, string(mine.UID))
		got <- found{p, err}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case f := <-got:
		t.Fatalf("the lookup answered before the cache started: %v, %v", f.pod, f.err)
	default:
	}
	start()
	select {
	case f := <-got:
		if f.err != nil || f.pod == nil || f.pod.Name != "early" {
			t.Fatalf("lookup after the cache started: %v, %v", f.pod, f.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the lookup did not answer once the cache started")
	}
	if p, err := r.PodByUID(ctx, string(other.UID)); p != nil || err != nil {
		t.Fatalf("a pod of another node: %v, %v", p, err)
	}
}
