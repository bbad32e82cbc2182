// Package chart tests the Helm chart: helm lint, helm template for several
// values sets decoded strictly into typed Kubernetes objects, and the
// rendered objects applied to a real kube-apiserver (envtest) with a
// server-side dry run.
package chart

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/memcuda/memcuda/internal/envtestenv"
)

const chartDir = "../../charts/memcuda"

func helm(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	out, err := exec.Command("bash", "../../scripts/helm.sh").Output()
	if err != nil {
		t.Fatalf("no helm (set HELM or let scripts/helm.sh build it): %v", err)
	}
	return strings.TrimSpace(string(out))
}

func render(t *testing.T, values string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helm(t), "template", "memcuda", chartDir, "--namespace", "memcuda", "--values", filepath.Join("testdata", values))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, errors.New(stderr.String())
	}
	return out, nil
}

// decode splits rendered YAML into typed objects, strictly: a field the
// Kubernetes types do not know fails the test. Custom resources stay
// unstructured.
func decode(t *testing.T, manifest []byte) []runtime.Object {
	t.Helper()
	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			u := &unstructured.Unstructured{}
			if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
				t.Fatal(err)
			}
			objs = append(objs, u)
			continue
		}
		if err != nil {
			t.Fatalf("strict decode: %v\n%s", err, doc)
		}
		objs = append(objs, obj)
	}
}

func find[T runtime.Object](objs []runtime.Object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func TestLint(t *testing.T) {
	for _, v := range []string{"default.yaml", "external-redis.yaml", "monitoring-runtimeclass.yaml", "overrides.yaml"} {
		out, err := exec.Command(helm(t), "lint", "--strict", chartDir, "--values", filepath.Join("testdata", v)).CombinedOutput()
		if err != nil {
			t.Fatalf("helm lint with %s: %v\n%s", v, err, out)
		}
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	for _, v := range []string{"invalid-unknown-key.yaml", "invalid-backend.yaml"} {
		if _, err := render(t, v); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s rendered (err %v), want a values.schema.json error", v, err)
		}
	}
}

func TestDefaultValues(t *testing.T) {
	out, err := render(t, "default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, out)
	ds := find[*appsv1.DaemonSet](objs)
	if len(ds) != 1 {
		t.Fatalf("%d DaemonSets", len(ds))
	}
	// The new agent starts beside the old one and takes over (a hand-over).
	if u := ds[0].Spec.UpdateStrategy; u.RollingUpdate == nil || u.RollingUpdate.MaxSurge == nil || u.RollingUpdate.MaxSurge.IntValue() != 1 ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Fatalf("update strategy %+v, want a rolling update with maxSurge 1, maxUnavailable 0", u)
	}
	spec := ds[0].Spec.Template.Spec
	if !spec.HostPID || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName == "" {
		t.Fatalf("pod spec: hostPID=%v priority=%q sa=%q", spec.HostPID, spec.PriorityClassName, spec.ServiceAccountName)
	}
	c := spec.Containers[0]
	env := envOf(c)
	if env["NVIDIA_VISIBLE_DEVICES"].Value != "all" || env["NVIDIA_DRIVER_CAPABILITIES"].Value != "compute,utility" {
		t.Fatalf("NVIDIA env %v", env)
	}
	if env["NODE_NAME"].ValueFrom == nil || env["MEMCUDA_REDIS_PREFIX"].Value != "tensor:$(NODE_NAME):" {
		t.Fatalf("per-node prefix env %v", env)
	}
	// The bundled Redis is locked down: the agent logs in as its ACL user
	// with the generated password; the default user is off; only the
	// agents may reach it.
	pw := env["REDIS_PASSWORD"].ValueFrom
	if env["MEMCUDA_REDIS_URL"].Value != "redis://agent:$(REDIS_PASSWORD)@memcuda-redis:6379/0" || pw == nil || pw.SecretKeyRef == nil ||
		pw.SecretKeyRef.Name != "memcuda-redis" || pw.SecretKeyRef.Key != "agent-password" {
		t.Fatalf("redis url %q, password from %+v", env["MEMCUDA_REDIS_URL"].Value, pw)
	}
	secrets := find[*corev1.Secret](objs)
	if len(secrets) != 1 || len(secrets[0].StringData["agent-password"]) < 32 ||
		!strings.Contains(secrets[0].StringData["users.acl"], "user default off") ||
		!strings.Contains(secrets[0].StringData["users.acl"], "user agent on >"+secrets[0].StringData["agent-password"]) {
		t.Fatalf("redis secret %+v", secrets)
	}
	redisArgs := strings.Join(find[*appsv1.Deployment](objs)[0].Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(redisArgs, "--aclfile /etc/memcuda-redis/users.acl") || strings.Contains(redisArgs, "protected-mode") {
		t.Fatalf("redis args %q", redisArgs)
	}
	nps := find[*networkingv1.NetworkPolicy](objs)
	if len(nps) != 1 || len(nps[0].Spec.Ingress) != 1 || len(nps[0].Spec.Ingress[0].From) != 1 ||
		nps[0].Spec.Ingress[0].From[0].PodSelector.MatchLabels["app.kubernetes.io/component"] != "agent" {
		t.Fatalf("redis NetworkPolicy %+v", nps)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Fatalf("agent securityContext %+v, want the documented default (privileged)", sc)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--kubernetes", "--socket=/run/memcuda/agent.sock", "--resource-name=memcuda.io/tensors", "--allow-host-clients=false"} {
		if !strings.Contains(args, want) {
			t.Fatalf("args %q lack %q", args, want)
		}
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Fatal("probes missing")
	}
	paths := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			paths[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources", "/run/memcuda"} {
		if !paths[p] {
			t.Fatalf("hostPath %s not mounted (%v)", p, paths)
		}
	}
	if len(find[*appsv1.Deployment](objs)) != 1 {
		t.Fatal("bundled Redis missing")
	}
	roles := find[*rbacv1.ClusterRole](objs)
	if len(roles) != 1 || !hasRule(roles[0], "", "pods", "patch") || !hasRule(roles[0], "events.k8s.io", "events", "create") {
		t.Fatalf("ClusterRole rules %v", roles)
	}
	if len(find[*unstructured.Unstructured](objs)) != 0 {
		t.Fatal("ServiceMonitor rendered although disabled")
	}
}

func hasRule(r *rbacv1.ClusterRole, group, resource, verb string) bool {
	for _, rule := range r.Rules {
		if contains(rule.APIGroups, group) && contains(rule.Resources, resource) && contains(rule.Verbs, verb) {
			return true
		}
	}
	return false
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// The keys users of other charts expect.
func TestOverridesAffinityAndSecurity(t *testing.T) {
	out, err := render(t, "overrides.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, out)
	ds := find[*appsv1.DaemonSet](objs)
	if len(ds) != 1 || ds[0].Name != "mc" || ds[0].Labels["app.kubernetes.io/name"] != "tensors" {
		t.Fatalf("DaemonSet names: %+v", ds)
	}
	spec := ds[0].Spec.Template.Spec
	terms := spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if terms[0].MatchExpressions[0].Key != "nvidia.com/gpu.present" {
		t.Fatalf("affinity %+v", spec.Affinity)
	}
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsUser == nil || *spec.SecurityContext.RunAsUser != 0 {
		t.Fatalf("podSecurityContext %+v", spec.SecurityContext)
	}
	c := spec.Containers[0]
	if c.SecurityContext.Privileged != nil || len(c.SecurityContext.Capabilities.Add) != 1 || c.Resources.Limits.Memory().String() != "1Gi" {
		t.Fatalf("container securityContext %+v resources %+v", c.SecurityContext, c.Resources)
	}
	for _, o := range objs {
		if m, ok := o.(metav1.Object); ok && !strings.HasPrefix(m.GetName(), "mc") {
			t.Errorf("%T %s does not carry the fullnameOverride", o, m.GetName())
		}
	}
	acl := find[*corev1.Secret](objs)[0].StringData["users.acl"]
	if !strings.Contains(acl, "user producer on >secret ~tensor:* +@all") {
		t.Fatalf("extra ACL user missing:\n%s", acl)
	}
}

func TestExternalRedis(t *testing.T) {
	out, err := render(t, "external-redis.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, out)
	if len(find[*appsv1.Deployment](objs)) != 0 {
		t.Fatal("a Redis Deployment rendered with an external Redis")
	}
	c := find[*appsv1.DaemonSet](objs)[0].Spec.Template.Spec.Containers[0]
	env := envOf(c)
	if env["REDIS_PASSWORD"].ValueFrom == nil || env["REDIS_PASSWORD"].ValueFrom.SecretKeyRef.Name != "redis-auth" {
		t.Fatalf("password env %+v", env["REDIS_PASSWORD"])
	}
	if env["MEMCUDA_REDIS_URL"].Value != "redis://:$(REDIS_PASSWORD)@redis.infra.svc:6379/0" || env["MEMCUDA_REDIS_PREFIX"].Value != "gpu:$(NODE_NAME):" {
		t.Fatalf("redis env %v %v", env["MEMCUDA_REDIS_URL"], env["MEMCUDA_REDIS_PREFIX"])
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--backend=legacy") {
		t.Fatal("backend not passed")
	}
}

func TestMonitoringAndRuntimeClass(t *testing.T) {
	out, err := render(t, "monitoring-runtimeclass.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, out)
	spec := find[*appsv1.DaemonSet](objs)[0].Spec.Template.Spec
	if spec.RuntimeClassName == nil || *spec.RuntimeClassName != "nvidia" || spec.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Fatalf("runtimeClass %v nodeSelector %v", spec.RuntimeClassName, spec.NodeSelector)
	}
	sms := find[*unstructured.Unstructured](objs)
	if len(sms) != 1 || sms[0].GetKind() != "ServiceMonitor" || sms[0].GetLabels()["release"] != "prometheus" {
		t.Fatalf("ServiceMonitor %v", sms)
	}
}

// TestServerSideDryRun sends every rendered object to a real API server,
// which validates and admits it without storing it.
func TestServerSideDryRun(t *testing.T) {
	c, err := client.New(envtestenv.Start(t), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "memcuda"}}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"default.yaml", "external-redis.yaml", "monitoring-runtimeclass.yaml", "overrides.yaml"} {
		out, err := render(t, v)
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range decode(t, out) {
			co, ok := obj.(client.Object)
			if !ok {
				t.Fatalf("%T is not a client.Object", obj)
			}
			if _, ok := obj.(*unstructured.Unstructured); ok {
				continue // a ServiceMonitor needs the Prometheus operator's CRD; decoded above
			}
			if err := c.Create(ctx, co, client.DryRunAll); err != nil {
				t.Fatalf("%s: dry-run create of %s %s: %v", v, obj.GetObjectKind().GroupVersionKind().Kind, co.GetName(), err)
			}
		}
	}
}
