package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	"github.com/memcuda/memcuda/internal/podident"
	"github.com/memcuda/memcuda/pkg/server"
)

// Authorizer identifies socket clients by pod (SO_PEERCRED pid, then
// /proc/<pid>/cgroup; the agent runs with hostPID) and answers sharing
// questions from namespace annotations. It implements server.Authorizer.
type Authorizer struct {
	R *PodReconciler
}

// Identify implements server.Authorizer.
func (a Authorizer) Identify(ctx context.Context, pid int) (server.Identity, error) {
	id := server.Identity{PID: pid}
	p, err := podident.OfPID(pid)
	if err != nil {
		return id, fmt.Errorf("read the cgroup of pid %d (does the agent run with hostPID?): %w", pid, err)
	}
	if p.UID == "" {
		return id, nil // not in a pod
	}
	pod, err := a.R.PodByUID(ctx, p.UID)
	if err != nil {
		return id, fmt.Errorf("look up pod %s: %w", p.UID, err)
	}
	if pod == nil {
		return id, fmt.Errorf("pod %s is not a pod of node %s", p.UID, a.R.Node)
	}
	id.Namespace, id.Pod, id.PodUID = pod.Namespace, pod.Name, p.UID
	return id, nil
}

// Shares implements server.Authorizer.
func (a Authorizer) Shares(ctx context.Context, owner, reader string) bool {
	return k8sapi.Shares(a.R.NamespaceShares(ctx, owner), reader)
}

// Denied implements server.Authorizer: an Event on the pod.
func (a Authorizer) Denied(ctx context.Context, id server.Identity, msg string) {
	if id.Pod == "" {
		return
	}
	var pod corev1.Pod
	if err := a.R.Get(ctx, types.NamespacedName{Namespace: id.Namespace, Name: id.Pod}, &pod); err == nil {
		a.R.event(&pod, corev1.EventTypeWarning, k8sapi.ReasonPermissionDenied, "%s", msg)
	}
}

var _ server.Authorizer = Authorizer{}
