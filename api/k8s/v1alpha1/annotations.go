// Package v1alpha1 holds the Kubernetes-facing API of mem-cuda: the pod and
// namespace annotations the agent reads and writes. docs/kubernetes.md
// documents them with examples.
package v1alpha1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Annotations.
const (
	// AnnotationTensors on a pod lists the tensors it needs (JSON, see TensorRequest).
	AnnotationTensors = "memcuda.io/tensors"
	// AnnotationStatus is written by the agent: name -> "ready" or the error.
	AnnotationStatus = "memcuda.io/tensors-status"
	// AnnotationShareWith on a namespace lists the namespaces ("*": all)
	// whose pods may open this namespace's tensors.
	AnnotationShareWith = "memcuda.io/share-with"
	// ResourceName is the extended resource the device plugin advertises
	// by default.
	ResourceName = "memcuda.io/tensors"
)

// Event reasons recorded on pods.
const (
	ReasonTensorCreated     = "TensorCreated"
	ReasonTensorReady       = "TensorReady"
	ReasonTensorMismatch    = "TensorMismatch"
	ReasonTensorUnavailable = "TensorUnavailable"
	ReasonTensorReleased    = "TensorReleased"
	ReasonInvalidAnnotation = "InvalidTensorAnnotation"
	ReasonPermissionDenied  = "TensorPermissionDenied"
	// ReasonTensorLost: the tensor's memory did not survive a restart of
	// the node's agent (see docs/architecture.md, "Survival").
	ReasonTensorLost = "TensorLost"
)

// TensorRequest is one entry of the memcuda.io/tensors annotation.
type TensorRequest struct {
	// Name is the tensor's name in the pod's namespace, or
	// "<namespace>/<name>" for a tensor another namespace shares.
	Name string `json:"name"`
	// DType and Shape are required with Create, and checked when given.
	DType string  `json:"dtype,omitempty"`
	Shape []int64 `json:"shape,omitempty"`
	// Device is an ordinal or a GPU UUID (default 0).
	Device string `json:"device,omitempty"`
	// Create makes the tensor when it does not exist.
	Create bool `json:"create,omitempty"`
}

// ParseTensors decodes the annotation strictly: a JSON list of entries with
// no unknown fields, names of the form <name> or <namespace>/<name>, each
// listed once, and dtype and shape with create. The agent checks names,
// dtypes and shapes against its own rules when it reads the pod.
func ParseTensors(s string) ([]TensorRequest, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	var out []TensorRequest
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("%s must be a JSON list of {name, dtype, shape, device, create}: %v", AnnotationTensors, err)
	}
	seen := map[string]bool{}
	for i, r := range out {
		short := r.Name
		if ns, n, ok := strings.Cut(r.Name, "/"); ok {
			if ns == "" || strings.Contains(n, "/") {
				return nil, fmt.Errorf("entry %d: name %q: want <name> or <namespace>/<name>", i, r.Name)
			}
			short = n
		}
		if short == "" {
			return nil, fmt.Errorf("entry %d: name is empty", i)
		}
		if seen[r.Name] {
			return nil, fmt.Errorf("entry %d: %q listed twice", i, r.Name)
		}
		seen[r.Name] = true
		if r.Create && (r.DType == "" || r.Shape == nil) {
			return nil, fmt.Errorf("entry %d (%s): create needs dtype and shape", i, r.Name)
		}
	}
	return out, nil
}

// Scoped is the registry name of a tensor a pod of namespace ns asks for:
// "<ns>/<name>" for its own, the name itself when it names a namespace.
func Scoped(ns, name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	return ns + "/" + name
}

// Owner is the namespace of a scoped name.
func Owner(scoped string) string {
	ns, _, _ := strings.Cut(scoped, "/")
	return ns
}

// Shares reports whether a namespace's share-with annotation lets reader in.
func Shares(shareWith, reader string) bool {
	for _, s := range strings.Split(shareWith, ",") {
		if s = strings.TrimSpace(s); s == "*" || s == reader {
			return true
		}
	}
	return false
}
