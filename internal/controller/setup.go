package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
)

// Options configure the controller's manager.
type Options struct {
	Node       string
	RetryAfter time.Duration
	// SweepEvery is how often references of pods that no longer exist (they
	// ended while the agent was down) are dropped.
	SweepEvery time.Duration
}

// NewManager returns a manager whose cache holds only this node's pods (a
// field selector on spec.nodeName) and namespaces, with the pod controller
// and the sweeper added.
func NewManager(cfg *rest.Config, st Store, o Options) (manager.Manager, *PodReconciler, error) {
	if o.Node == "" {
		return nil, nil, errors.New("controller: node name is empty")
	}
	if o.RetryAfter == 0 {
		o.RetryAfter = 10 * time.Second
	}
	if o.SweepEvery == 0 {
		o.SweepEvery = 30 * time.Second
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", o.Node)},
		}},
		Metrics:                metricsserver.Options{BindAddress: "0"}, // the agent serves its own /metrics
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, nil, err
	}
	r := &PodReconciler{Client: mgr.GetClient(), Store: st, Node: o.Node, Recorder: mgr.GetEventRecorder("memcuda-agent"), RetryAfter: o.RetryAfter,
		CacheSynced: mgr.GetCache().WaitForCacheSync}
	if err := ctrl.NewControllerManagedBy(mgr).For(&corev1.Pod{}).Named("memcuda-pods").Complete(r); err != nil {
		return nil, nil, err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		t := time.NewTicker(o.SweepEvery)
		defer t.Stop()
		for {
			if mgr.GetCache().WaitForCacheSync(ctx) {
				if err := r.Sweep(ctx); err != nil {
					ctrl.Log.WithName("sweep").Error(err, "sweep failed")
				}
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})); err != nil {
		return nil, nil, err
	}
	return mgr, r, nil
}

// Sweep drops the references of pods that no longer exist on this node (or
// exist with another UID): pods that ended while the agent was not watching.
func (r *PodReconciler) Sweep(ctx context.Context) error {
	gone := func(h string) bool {
		ns, name, uid, ok := registry.ParsePodHolder(h)
		return ok && !r.podAlive(ctx, ns, name, types.UID(uid))
	}
	return r.releaseHolders(ctx, gone, func(name, h string) {
		ctrl.Log.WithName("sweep").Info("dropped the references of a pod that is gone", "tensor", name, "holder", h)
	})
}

func (r *PodReconciler) podAlive(ctx context.Context, ns, name string, uid types.UID) bool {
	var pod corev1.Pod
	if err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod); err != nil {
		return false
	}
	return pod.UID == uid && pod.DeletionTimestamp == nil && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// PodByUID finds a pod of this node in the cache (for the socket's access
// control): nil when no pod of this node has that UID. The agent accepts
// connections before its manager has started the cache (when it starts,
// and when it takes over its predecessor's socket), so the lookup waits
// for the cache first.
func (r *PodReconciler) PodByUID(ctx context.Context, uid string) (*corev1.Pod, error) {
	if err := r.cacheReady(ctx); err != nil {
		return nil, err
	}
	var pods corev1.PodList
	if err := r.List(ctx, &pods); err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if string(pods.Items[i].UID) == uid {
			return &pods.Items[i], nil
		}
	}
	return nil, nil
}

// NamespaceShares reports a namespace's share-with annotation.
func (r *PodReconciler) NamespaceShares(ctx context.Context, ns string) string {
	if r.cacheReady(ctx) != nil {
		return ""
	}
	var n corev1.Namespace
	if err := r.Get(ctx, types.NamespacedName{Name: ns}, &n); err != nil {
		return ""
	}
	return n.Annotations[k8sapi.AnnotationShareWith]
}

// cacheWait bounds how long a socket lookup waits for the cache.
const cacheWait = 30 * time.Second

// cacheReady waits, up to cacheWait, until the manager's cache has started
// and synced (CacheSynced; nil: nothing to wait for).
func (r *PodReconciler) cacheReady(ctx context.Context) error {
	if r.CacheSynced == nil || r.cacheSynced.Load() {
		return nil
	}
	wait, cancel := context.WithTimeout(ctx, cacheWait)
	defer cancel()
	if !r.CacheSynced(wait) {
		return fmt.Errorf("%w: the agent's cache of pods has not synced within %s", errdefs.ErrUnavailable, cacheWait)
	}
	r.cacheSynced.Store(true)
	return nil
}
