package server

import (
	"context"
	"fmt"
	"strings"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// Identity is who is at the other end of a connection.
type Identity struct {
	PID       int
	Namespace string // "" for a process outside any pod
	Pod       string
	PodUID    string
}

// Authorizer scopes tensor names by Kubernetes namespace (see
// docs/kubernetes.md, "Access"). Without one every client sees every name.
type Authorizer interface {
	// Identify finds the pod of a process (SO_PEERCRED pid).
	Identify(ctx context.Context, pid int) (Identity, error)
	// Shares reports whether namespace owner shares its tensors with reader.
	Shares(ctx context.Context, owner, reader string) bool
	// Denied reports a refusal (log, Event on the pod).
	Denied(ctx context.Context, id Identity, msg string)
}

// WithAuthorizer scopes names per namespace; allowHost lets processes that
// are in no pod in, with unscoped names.
func WithAuthorizer(a Authorizer, allowHost bool) Option {
	return func(s *Server) { s.auth, s.allowHost = a, allowHost }
}

// ownOps may only touch tensors of the caller's own namespace.
var ownOps = map[string]bool{v1.OpCreate: true, v1.OpDelete: true, v1.OpPublish: true}

// scope rewrites req.Name to the registry name the caller may use, or
// refuses. Pod clients name their namespace's tensors by short name and
// another namespace's as "<namespace>/<name>".
func (cn *conn) scope(req *v1.Request) error {
	if cn.srv.auth == nil {
		return nil
	}
	if cn.idErr != nil {
		return cn.deny(fmt.Sprintf("cannot tell which pod pid %d belongs to: %v", cn.pid, cn.idErr))
	}
	if cn.id.Namespace == "" {
		if !cn.srv.allowHost {
			return cn.deny(fmt.Sprintf("pid %d is not in a pod and the agent does not allow host clients", cn.pid))
		}
		return nil
	}
	switch req.Op {
	case v1.OpList:
		// A short prefix names the caller's own namespace, as names do.
		if req.Prefix != "" && !strings.Contains(req.Prefix, "/") {
			req.Prefix = cn.id.Namespace + "/" + req.Prefix
		}
		return nil
	case v1.OpHello, v1.OpStats, v1.OpGC, v1.OpTrim, v1.OpForget, v1.OpOffer, v1.OpReattach, v1.OpWatch, v1.OpCompactRecords, v1.OpPieces:
		return nil // a reattach scopes each of its names, a watch sees its tenant's segments
	}
	if err := tensor.ValidateName(req.Name); err != nil {
		return err
	}
	name := k8sapi.Scoped(cn.id.Namespace, req.Name)
	owner := k8sapi.Owner(name)
	if owner != cn.id.Namespace {
		if ownOps[req.Op] {
			return cn.deny(fmt.Sprintf("%s of %s: only pods of namespace %s may do that", req.Op, name, owner))
		}
		if !cn.shares(owner) {
			return cn.deny(fmt.Sprintf("namespace %s does not share %s with %s", owner, name, cn.id.Namespace))
		}
	}
	req.Name = name
	return nil
}

// shares reports whether namespace owner shares its tensors with the
// caller's. Only a name of another namespace asks: warm answers of the
// caller's own names need no deadline.
func (cn *conn) shares(owner string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), cn.srv.timeout)
	defer cancel()
	return cn.srv.auth.Shares(ctx, owner, cn.id.Namespace)
}

// visible reports whether a listed tensor may be shown to the caller.
func (cn *conn) visible(ctx context.Context, info v1.Tensor) bool {
	if cn.srv.auth == nil || cn.id.Namespace == "" {
		return true
	}
	owner := k8sapi.Owner(info.Name)
	return owner == cn.id.Namespace || cn.srv.auth.Shares(ctx, owner, cn.id.Namespace)
}

func (cn *conn) deny(msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cn.srv.timeout)
	defer cancel()
	cn.srv.log.Warn("request refused", "peer_pid", cn.pid, "namespace", cn.id.Namespace, "pod", cn.id.Pod, "reason", msg)
	cn.srv.auth.Denied(ctx, cn.id, msg)
	return fmt.Errorf("%w: %s", errdefs.ErrPermissionDenied, msg)
}
