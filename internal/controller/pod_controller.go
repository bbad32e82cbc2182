// Package controller is the agent's pod controller: it watches the pods of
// its node, creates or checks the tensors their memcuda.io/tensors
// annotation asks for, holds one pod-scoped reference per tensor until the
// pod ends, and records Events so `kubectl describe pod` shows what happened.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// Store is what the controller asks of the agent's store.
type Store interface {
	Create(ctx context.Context, p store.CreateParams) (v1.Tensor, store.Commit, error)
	Get(ctx context.Context, p store.GetParams) (v1.Tensor, store.Commit, error)
	Release(ctx context.Context, p store.ReleaseParams) (registry.ReleaseResult, error)
	DropHolder(ctx context.Context, name, holder string) (registry.ReleaseResult, bool, error)
	Stat(ctx context.Context, name string) (v1.Tensor, error)
	HeldBy(ctx context.Context, kind string) ([]string, error)
	Holders(ctx context.Context, name string) (map[string]int64, error)
}

// PodHolder is the reference holder of a pod.
func PodHolder(ns, name string, uid types.UID) string {
	return registry.PodHolder(ns, name, string(uid))
}

// PodReconciler reconciles the pods of one node.
type PodReconciler struct {
	client.Client
	Store    Store
	Node     string
	Recorder events.EventRecorder
	// RetryAfter is how soon a pod waiting for a tensor is looked at again.
	RetryAfter time.Duration
	// CacheSynced waits until the client's cache has started and synced,
	// false when ctx ends first (nil: a client without a cache).
	CacheSynced func(ctx context.Context) bool
	cacheSynced atomic.Bool // seen synced: no more waiting
}

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile implements reconcile.Reconciler.
func (r *PodReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	var pod corev1.Pod
	if err := r.Get(ctx, req.NamespacedName, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.releaseMatching(ctx, registry.PodNamePrefix(req.Namespace, req.Name), nil)
		}
		return ctrl.Result{}, err
	}
	if pod.Spec.NodeName != r.Node {
		return ctrl.Result{}, nil
	}
	holder := PodHolder(pod.Namespace, pod.Name, pod.UID)
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return ctrl.Result{}, r.releaseMatching(ctx, holder, &pod)
	}
	raw, ok := pod.Annotations[k8sapi.AnnotationTensors]
	if !ok {
		return ctrl.Result{}, nil
	}
	reqs, err := parseAnnotation(raw)
	if err != nil {
		r.event(&pod, corev1.EventTypeWarning, k8sapi.ReasonInvalidAnnotation, "%v", err)
		return ctrl.Result{}, r.setStatus(ctx, &pod, map[string]string{"*": "error: " + err.Error()})
	}
	// Events say when a tensor's condition changes, not every time the pod
	// is reconciled (a pod's own status updates reconcile it too): the
	// previous status tells which conditions are old news.
	var prev map[string]string
	_ = json.Unmarshal([]byte(pod.Annotations[k8sapi.AnnotationStatus]), &prev)
	status := map[string]string{}
	retry := false
	for _, tr := range reqs {
		st, again, ev := r.ensure(ctx, &pod, holder, tr)
		status[tr.Name] = st
		retry = retry || again
		if ev != nil && prev[tr.Name] != st {
			ev()
		}
	}
	if err := r.setStatus(ctx, &pod, status); err != nil {
		return ctrl.Result{}, err
	}
	if retry {
		logger.V(1).Info("waiting for tensors", "pod", req.NamespacedName)
		return ctrl.Result{RequeueAfter: r.RetryAfter}, nil
	}
	return ctrl.Result{}, nil
}

// ensure makes sure the pod holds its reference on one tensor. It returns
// the status string, whether to try again later, and the Event that says
// so (sent when the status changed).
func (r *PodReconciler) ensure(ctx context.Context, pod *corev1.Pod, holder string, tr k8sapi.TensorRequest) (string, bool, func()) {
	ev := func(typ, reason, format string, args ...any) func() {
		return func() { r.event(pod, typ, reason, format, args...) }
	}
	name := k8sapi.Scoped(pod.Namespace, tr.Name)
	if owner := k8sapi.Owner(name); owner != pod.Namespace {
		var ns corev1.Namespace
		if err := r.Get(ctx, types.NamespacedName{Name: owner}, &ns); err != nil || !k8sapi.Shares(ns.Annotations[k8sapi.AnnotationShareWith], pod.Namespace) {
			return "waiting: permission denied", true, // the owner may share it later
				ev(corev1.EventTypeWarning, k8sapi.ReasonPermissionDenied, "namespace %s does not share tensor %s with %s (annotation %s)", owner, name, pod.Namespace, k8sapi.AnnotationShareWith)
		}
	}
	if holders, err := r.Store.Holders(ctx, name); err == nil && holders[holder] > 0 {
		if info, err := r.Store.Stat(ctx, name); err == nil && matches(info.DType, info.Shape, tr) {
			return "ready", false, nil
		}
	}
	var err error
	created := false
	if tr.Create {
		_, statErr := r.Store.Stat(ctx, name)
		created = errors.Is(statErr, errdefs.ErrNotFound)
		_, _, err = r.Store.Create(ctx, store.CreateParams{Name: name, DType: tr.DType, Shape: tr.Shape, Device: tr.Device, Tenant: k8sapi.Owner(name), Holder: holder,
			Who: store.Who{slog.String("via", "pod-controller"), slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name)}})
	} else {
		got, _, gerr := r.Store.Get(ctx, store.GetParams{Name: name, Holder: holder})
		err = gerr
		if err == nil && tr.DType != "" && !matches(got.DType, got.Shape, tr) {
			r.Store.Release(ctx, store.ReleaseParams{Name: name, Holder: holder, Count: 1})
			err = fmt.Errorf("%w: tensor %s is %s%s, the pod asks for %s%s", errdefs.ErrAlreadyExists, name, got.DType,
				tensor.FormatShape(got.Shape), tr.DType, tensor.FormatShape(tr.Shape))
		}
	}
	switch {
	case err == nil && created:
		return "ready", false, ev(corev1.EventTypeNormal, k8sapi.ReasonTensorCreated, "created tensor %s (%s %v)", name, tr.DType, tr.Shape)
	case err == nil:
		return "ready", false, ev(corev1.EventTypeNormal, k8sapi.ReasonTensorReady, "holding tensor %s", name)
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return "error: " + err.Error(), false, ev(corev1.EventTypeWarning, k8sapi.ReasonTensorMismatch, "%v", err)
	case errors.Is(err, errdefs.ErrNotFound), errors.Is(err, errdefs.ErrUnavailable), errors.Is(err, errdefs.ErrOutOfMemory):
		return "waiting: " + err.Error(), true, ev(corev1.EventTypeWarning, k8sapi.ReasonTensorUnavailable, "tensor %s: %v", name, err)
	default:
		return "error: " + err.Error(), false, ev(corev1.EventTypeWarning, k8sapi.ReasonTensorUnavailable, "tensor %s: %v", name, err)
	}
}

// parseAnnotation reads a pod's memcuda.io/tensors annotation: the API's
// strict syntax, then the agent's rules for names, dtypes and shapes.
func parseAnnotation(raw string) ([]k8sapi.TensorRequest, error) {
	reqs, err := k8sapi.ParseTensors(raw)
	if err != nil {
		return nil, err
	}
	for i, r := range reqs {
		if err := tensor.ValidateName(r.Name[strings.IndexByte(r.Name, '/')+1:]); err != nil {
			return nil, fmt.Errorf("%s entry %d: %w", k8sapi.AnnotationTensors, i, err)
		}
		if r.DType == "" {
			continue
		}
		dt, err := tensor.ParseDType(r.DType)
		if err == nil {
			_, err = tensor.NumBytes(dt, r.Shape, 0)
		}
		if err != nil {
			return nil, fmt.Errorf("%s entry %d (%s): %w", k8sapi.AnnotationTensors, i, r.Name, err)
		}
	}
	return reqs, nil
}

// matches reports whether a tensor has the dtype and shape a request names
// (a request without them accepts any).
func matches(dt v1.DType, shape []int64, tr k8sapi.TensorRequest) bool {
	if tr.DType != "" {
		want, err := tensor.ParseDType(tr.DType)
		if err != nil || want != dt {
			return false
		}
	}
	return tr.Shape == nil || tensor.FormatShape(tr.Shape) == tensor.FormatShape(shape)
}

// releaseMatching drops every reference whose holder starts with prefix
// (one pod's, or every incarnation of a pod name that is gone).
func (r *PodReconciler) releaseMatching(ctx context.Context, prefix string, pod *corev1.Pod) error {
	return r.releaseHolders(ctx, func(h string) bool { return strings.HasPrefix(h, prefix) }, func(name, _ string) {
		if pod != nil {
			r.event(pod, corev1.EventTypeNormal, k8sapi.ReasonTensorReleased, "released tensor %s", name)
		}
	})
}

// releaseHolders drops all references of every pod holder that drop
// selects, on every tensor that has pod references, and calls done for each.
func (r *PodReconciler) releaseHolders(ctx context.Context, drop func(holder string) bool, done func(name, holder string)) error {
	names, err := r.Store.HeldBy(ctx, registry.KindPod)
	if err != nil {
		return err
	}
	for _, name := range names {
		holders, err := r.Store.Holders(ctx, name)
		if err != nil {
			return err
		}
		for h := range holders {
			if !drop(h) {
				continue
			}
			if _, _, err := r.Store.DropHolder(ctx, name, h); err != nil {
				return err
			}
			done(name, h)
		}
	}
	return nil
}

// TensorLost tells the pods that held a tensor that its memory did not
// survive the agent's restart (a Warning Event on each).
func (r *PodReconciler) TensorLost(ctx context.Context, name string, holders map[string]int64, reason string) {
	for h := range holders {
		ns, podName, uid, ok := registry.ParsePodHolder(h)
		if !ok {
			continue
		}
		var pod corev1.Pod
		var err error
		for try := 0; try < 20; try++ { // the cache may still be starting
			if err = r.Get(ctx, client.ObjectKey{Namespace: ns, Name: podName}, &pod); err == nil || apierrors.IsNotFound(err) {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		if err != nil || string(pod.UID) != uid {
			continue
		}
		r.event(&pod, corev1.EventTypeWarning, k8sapi.ReasonTensorLost, "tensor %s was lost when the node's agent restarted: %s", name, reason)
	}
}

func (r *PodReconciler) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(pod, nil, typ, reason, "Reconcile", format, args...)
	}
}

// setStatus writes the status annotation when it changed.
func (r *PodReconciler) setStatus(ctx context.Context, pod *corev1.Pod, status map[string]string) error {
	b, _ := json.Marshal(status) // map keys are sorted: equal status, equal bytes
	if pod.Annotations[k8sapi.AnnotationStatus] == string(b) {
		return nil
	}
	patch := client.MergeFrom(pod.DeepCopy())
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[k8sapi.AnnotationStatus] = string(b)
	return client.IgnoreNotFound(r.Patch(ctx, pod, patch))
}
