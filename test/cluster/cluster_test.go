// Package cluster runs mem-cuda on a real single-node Kubernetes cluster:
// kubelet, containerd, runc, CNI and real pods, brought up by `make
// test-cluster` (scripts/cluster-test.sh) inside a network namespace of its
// own. It asserts what users see: helm install, the node's resource, pods
// sharing a tensor through the Python client, refusals across namespaces,
// Events in kubectl describe, the agent's logs, references released with
// pods, a kubelet restart, and an upgrade of the agent that keeps a pod's
// tensor. Without the cluster (MEMCUDA_CLUSTER_ENV unset) it skips.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
)

const (
	release   = "memcuda"
	namespace = "memcuda"
	node      = "node-ci"
)

type cluster struct {
	t    *testing.T
	cs   *kubernetes.Clientset
	root string // the repository
	helm string
	dir  string // the cluster's state directory
}

func setup(t *testing.T) *cluster {
	if os.Getenv("MEMCUDA_CLUSTER_ENV") == "" {
		t.Skip("needs the test cluster: make test-cluster")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("../..")
	return &cluster{t: t, cs: cs, root: root, helm: os.Getenv("HELM"), dir: os.Getenv("CLUSTER_DIR")}
}

func (c *cluster) run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// stdout runs a command and returns what it printed on stdout alone: a
// kubectl exec's client may log on stderr (its websocket stream's
// notices) beside the output a test reads. Fails the test on an error,
// with both.
func (c *cluster) stdout(name string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = c.root
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

func (c *cluster) must(name string, args ...string) string {
	c.t.Helper()
	out, err := c.run(name, args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// eventually polls cond every 250 ms for d.
func (c *cluster) eventually(what string, d time.Duration, cond func() (bool, error)) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s (last error: %v)", d, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (c *cluster) helmInstall(args ...string) {
	c.t.Helper()
	base := []string{"--namespace", namespace, "charts/memcuda", "--set", "image.repository=localhost/memcuda", "--set", "image.pullPolicy=Never",
		"--set", "redis.image=localhost/redis:ci", "--set", "backend=host",
		"--set", "devicePlugin.podResourcesDir=" + filepath.Join(c.dir, "kubelet", "pod-resources"), "--wait", "--timeout", "5m"}
	c.must(c.helm, append(append(args[:len(args):len(args)], base...), "--set", "image.tag="+c.tag())...)
}

func (c *cluster) tag() string {
	if t := os.Getenv("AGENT_TAG"); t != "" {
		return t
	}
	return "ci"
}

// agentReady waits until the DaemonSet's pods are all updated and ready.
func (c *cluster) agentReady(d time.Duration) {
	c.t.Helper()
	c.eventually("the agent DaemonSet to be ready", d, func() (bool, error) {
		ds, err := c.cs.AppsV1().DaemonSets(namespace).Get(context.Background(), release, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := ds.Status
		return s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled == 1 && s.UpdatedNumberScheduled == 1 &&
			s.NumberReady == 1 && s.NumberAvailable == 1 && s.CurrentNumberScheduled == 1, nil
	})
}

func (c *cluster) allocatable(want int64, d time.Duration) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("node %s to offer %d %s", node, want, k8sapi.ResourceName), d, func() (bool, error) {
		n, err := c.cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		q := n.Status.Allocatable[corev1.ResourceName(k8sapi.ResourceName)]
		return q.Value() == want, fmt.Errorf("allocatable %v", q.String())
	})
}

func (c *cluster) namespace(name string, annotations map[string]string) {
	c.t.Helper()
	_, err := c.cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	c.eventually("the default service account of "+name, time.Minute, func() (bool, error) {
		_, err := c.cs.CoreV1().ServiceAccounts(name).Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil, err
	})
}

// pythonPod runs script in the consumer image with one memcuda.io/tensors
// slot (the device plugin mounts the socket and sets the environment).
func (c *cluster) pythonPod(ns, name, annotation, script string) {
	c.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "main", Image: "localhost/memcuda-py:ci", ImagePullPolicy: corev1.PullNever,
				Command: []string{"python3", "-u", "-c", pythonPrelude + script},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					corev1.ResourceName(k8sapi.ResourceName): resource.MustParse("1"),
				}},
			}},
		},
	}
	if annotation != "" {
		p.Annotations = map[string]string{k8sapi.AnnotationTensors: annotation}
	}
	if _, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// pythonPrelude: what every consumer pod starts with.
const pythonPrelude = `
import os, sys, time
import numpy as np
import memcuda
def say(*a):
    print(*a, flush=True)
def get(client, name, seconds=60):
    # the pod controller may still be creating it
    end = time.time() + seconds
    while True:
        try:
            return client.get(name)
        except memcuda.NotFound:
            if time.time() > end:
                raise
            time.sleep(0.2)
`

func (c *cluster) logs(ns, pod string) string {
	b, err := c.cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(context.Background())
	if err != nil {
		return ""
	}
	return string(b)
}

func (c *cluster) waitLog(ns, pod, want string, d time.Duration) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s/%s to print %q", ns, pod, want), d, func() (bool, error) {
		l := c.logs(ns, pod)
		return strings.Contains(l, want), fmt.Errorf("log so far: %q", l)
	})
}

func (c *cluster) waitPhase(ns, pod string, phase corev1.PodPhase, d time.Duration) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s/%s to be %s", ns, pod, phase), d, func() (bool, error) {
		p, err := c.cs.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodFailed && phase != corev1.PodFailed {
			c.t.Fatalf("%s/%s failed:\n%s", ns, pod, c.logs(ns, pod))
		}
		return p.Status.Phase == phase, fmt.Errorf("phase %s", p.Status.Phase)
	})
}

func (c *cluster) deletePod(ns, pod string) {
	c.t.Helper()
	if err := c.cs.CoreV1().Pods(ns).Delete(context.Background(), pod, metav1.DeleteOptions{}); err != nil {
		c.t.Fatal(err)
	}
	c.eventually(ns+"/"+pod+" to be gone", 2*time.Minute, func() (bool, error) {
		_, err := c.cs.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
		return err != nil, nil
	})
}

func (c *cluster) hasEvent(ns, pod, reason string) (bool, error) {
	list, err := c.cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, e := range list.Items {
		if e.Regarding.Name == pod && e.Reason == reason {
			return true, nil
		}
	}
	return false, fmt.Errorf("no %s Event on %s/%s among %d", reason, ns, pod, len(list.Items))
}

// agentLogs are the logs of the agent pods, as kubectl logs shows them.
func (c *cluster) agentLogs() string {
	out, _ := c.run("kubectl", "-n", namespace, "logs", "ds/"+release, "--tail=-1")
	return out
}

// redis runs redis-cli in the bundled Redis as the agent's user.
func (c *cluster) redis(args ...string) string {
	c.t.Helper()
	sec, err := c.cs.CoreV1().Secrets(namespace).Get(context.Background(), release+"-redis", metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	pw := string(sec.Data["agent-password"])
	return strings.TrimSpace(c.stdout("kubectl", append([]string{"-n", namespace, "exec", "deploy/" + release + "-redis", "--", "redis-cli",
		"--no-auth-warning", "--user", "agent", "--pass", pw}, args...)...))
}

// hash reads a Redis hash (redis-cli prints field and value on lines of their own).
func (c *cluster) hash(key string) map[string]string {
	c.t.Helper()
	m := map[string]string{}
	out := c.redis("HGETALL", key)
	if out == "" {
		return m
	}
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		m[lines[i]] = lines[i+1]
	}
	return m
}

func (c *cluster) record(name string) map[string]string {
	return c.hash("tensor:" + node + ":meta:" + name)
}

func (c *cluster) holders(name string) map[string]string {
	return c.hash("tensor:" + node + ":refs:" + name)
}

// queue sends a command through the Redis command queue and returns its reply.
func (c *cluster) queue(cmd map[string]any) map[string]any {
	c.t.Helper()
	id := fmt.Sprintf("ci-%d", time.Now().UnixNano())
	reply := "tensor:" + node + ":reply:" + id
	cmd["id"], cmd["reply_to"] = id, reply
	b, _ := json.Marshal(cmd)
	c.redis("RPUSH", "tensor:"+node+":cmd", string(b))
	out := c.redis("BLPOP", reply, "30")
	lines := strings.Split(out, "\n")
	var r map[string]any
	if len(lines) != 2 || json.Unmarshal([]byte(lines[1]), &r) != nil {
		c.t.Fatalf("no reply to %s: %q", b, out)
	}
	return r
}

func TestCluster(t *testing.T) {
	c := setup(t)
	start := time.Now()
	step := func(name string) { t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), name) }

	step("helm install")
	c.helmInstall("install", release, "--create-namespace")
	c.agentReady(3 * time.Minute)
	c.allocatable(128, 2*time.Minute)

	// The bundled Redis refuses anyone without the agent's credentials.
	if out, _ := c.run("kubectl", "-n", namespace, "exec", "deploy/"+release+"-redis", "--", "redis-cli", "ping"); !strings.Contains(out, "NOAUTH") {
		t.Fatalf("the bundled Redis answered a client without credentials: %q", out)
	}
	if got := c.redis("ping"); got != "PONG" {
		t.Fatalf("the agent's Redis user: %q", got)
	}

	step("a writer and a reader share a tensor in one namespace")
	c.namespace("team-a", nil)
	c.namespace("team-b", nil)
	c.pythonPod("team-a", "writer", `[{"name":"w","dtype":"f32","shape":[4096],"create":true}]`, `
say("SOCKET", os.environ.get("MEMCUDA_SOCKET"), os.path.exists(os.environ.get("MEMCUDA_SOCKET", "/nonexistent")))
c = memcuda.connect()
t = get(c, "w")
t.numpy()[:] = np.arange(4096, dtype=np.float32)
say("WRITTEN", t.info.name, t.info.uid)
time.sleep(3600)
`)
	c.waitLog("team-a", "writer", "WRITTEN", 3*time.Minute)
	if l := c.logs("team-a", "writer"); !strings.Contains(l, "SOCKET /run/memcuda/agent.sock True") {
		t.Fatalf("the device plugin did not give the pod the socket:\n%s", l)
	}
	reader := `
c = memcuda.connect()
t = get(c, sys.argv[-1] if len(sys.argv) > 1 else "w")
ok = np.array_equal(t.numpy(), np.arange(4096, dtype=np.float32))
say("MATCH" if ok else "MISMATCH", t.info.name)
`
	c.pythonPod("team-a", "reader", "", reader)
	c.waitPhase("team-a", "reader", corev1.PodSucceeded, 2*time.Minute)
	if l := c.logs("team-a", "reader"); !strings.Contains(l, "MATCH team-a/w") {
		t.Fatalf("reader:\n%s", l)
	}

	step("another namespace is refused, then let in by share-with")
	c.pythonPod("team-b", "outsider", "", `
c = memcuda.connect()
try:
    c.get("team-a/w")
    say("OPENED")
except memcuda.PermissionDenied as e:
    say("DENIED", e)
`)
	c.waitPhase("team-b", "outsider", corev1.PodSucceeded, 2*time.Minute)
	if l := c.logs("team-b", "outsider"); !strings.Contains(l, "DENIED") {
		t.Fatalf("outsider:\n%s", l)
	}
	c.eventually("a TensorPermissionDenied Event on the outsider", 30*time.Second, func() (bool, error) {
		return c.hasEvent("team-b", "outsider", k8sapi.ReasonPermissionDenied)
	})
	if l := c.agentLogs(); !strings.Contains(l, `"msg":"request refused"`) || !strings.Contains(l, `"namespace":"team-b"`) {
		t.Fatalf("the agent's log has no refusal of team-b:\n%s", tail(l, 20))
	}
	ns, err := c.cs.CoreV1().Namespaces().Get(context.Background(), "team-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Annotations = map[string]string{k8sapi.AnnotationShareWith: "team-b"}
	if _, err := c.cs.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.pythonPod("team-b", "guest", "", strings.Replace(reader, `len(sys.argv) > 1 else "w"`, `len(sys.argv) > 1 else "team-a/w"`, 1))
	c.waitPhase("team-b", "guest", corev1.PodSucceeded, 2*time.Minute)
	if l := c.logs("team-b", "guest"); !strings.Contains(l, "MATCH team-a/w") {
		t.Fatalf("guest after share-with:\n%s", l)
	}

	step("kubectl describe and kubectl logs")
	desc := c.must("kubectl", "-n", "team-a", "describe", "pod", "writer")
	if !strings.Contains(desc, k8sapi.ReasonTensorCreated) || !strings.Contains(desc, "created tensor team-a/w") {
		t.Fatalf("kubectl describe pod shows no TensorCreated Event:\n%s", desc)
	}
	if l := c.agentLogs(); !strings.Contains(l, `"msg":"registered with the kubelet"`) || !strings.Contains(l, `"msg":"tensor created"`) {
		t.Fatalf("kubectl logs ds/%s:\n%s", release, tail(l, 20))
	}

	step("deleting pods releases their references; a deleted tensor goes with the last one")
	if h := c.holders("team-a/w"); len(h) < 3 {
		t.Fatalf("holders of team-a/w while the writer runs: %v (want registry, the writer's pod and its connection)", h)
	}
	c.deletePod("team-a", "writer")
	c.eventually("the writer's references to go", time.Minute, func() (bool, error) {
		h := c.holders("team-a/w")
		return len(h) == 1 && h["registry"] == "1", fmt.Errorf("holders %v", h)
	})
	c.pythonPod("team-a", "last", "", `
c = memcuda.connect()
t = get(c, "w")
say("HOLDING")
time.sleep(3600)
`)
	c.waitLog("team-a", "last", "HOLDING", 2*time.Minute)
	if r := c.queue(map[string]any{"op": "delete", "name": "team-a/w"}); r["ok"] != true {
		t.Fatalf("delete through the queue: %v", r)
	}
	if rec := c.record("team-a/w"); rec["state"] != "deleted" {
		t.Fatalf("team-a/w after delete while held: %v", rec)
	}
	c.deletePod("team-a", "last")
	c.eventually("team-a/w to go with its last holder", time.Minute, func() (bool, error) {
		rec := c.record("team-a/w")
		return len(rec) == 0, fmt.Errorf("record %v", rec)
	})

	step("helm upgrade to a new image tag while a pod holds and reads a tensor")
	c.pythonPod("team-a", "steady", `[{"name":"kept","dtype":"u8","shape":[65536],"create":true}]`, `
c = memcuda.connect()
t = get(c, "kept")
a = t.numpy()
a[:] = np.arange(65536) % 251
want = a.copy()
say("UID", t.info.uid)
n = 0
while True:
    if not np.array_equal(a, want):
        say("BAD bytes changed")
        sys.exit(1)
    c.stat("kept")  # a call to the agent: it reconnects across the upgrade
    n += 1
    if n % 20 == 0:
        say("OK", n, "reconnects", c.reconnects)
    time.sleep(0.05)
`)
	c.waitLog("team-a", "steady", "OK 40", 2*time.Minute)
	uid := c.record("team-a/kept")["uid"]
	// The hand-over needs the old agent serving when its replacement
	// starts: beside an agent pod that is not ready, the rollout starts
	// the new one at once.
	c.agentReady(time.Minute)
	old, err := c.cs.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil || len(old.Items) != 1 {
		t.Fatalf("agent pods before the upgrade: %v %v", old, err)
	}
	c.must("ctr", "-a", os.Getenv("CONTAINERD_ADDRESS"), "-n", "k8s.io", "images", "tag", "--force", "localhost/memcuda:ci", "localhost/memcuda:ci2")
	t.Setenv("AGENT_TAG", "ci2")
	c.helmInstall("upgrade", release, "--reuse-values")
	c.eventually("the old agent pod to be replaced", 3*time.Minute, func() (bool, error) {
		pods, err := c.cs.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err != nil {
			return false, err
		}
		return len(pods.Items) == 1 && pods.Items[0].UID != old.Items[0].UID && pods.Items[0].Spec.Containers[0].Image == "localhost/memcuda:ci2", nil
	})
	c.agentReady(2 * time.Minute)
	time.Sleep(2 * time.Second)
	l := c.logs("team-a", "steady")
	if strings.Contains(l, "BAD") || strings.Contains(l, "Traceback") {
		t.Fatalf("the pod holding a tensor saw the upgrade:\n%s", tail(l, 20))
	}
	c.eventually("the holder to have reconnected once", time.Minute, func() (bool, error) {
		l := c.logs("team-a", "steady")
		return strings.Contains(lastLine(l), "reconnects 1"), fmt.Errorf("last line %q", lastLine(l))
	})
	if got := c.record("team-a/kept")["uid"]; got != uid {
		t.Fatalf("team-a/kept has uid %q after the upgrade, %q before", got, uid)
	}
	if l := c.agentLogs(); !strings.Contains(l, "took over from the previous instance") {
		// A container that restarted after the hand-over starts afresh:
		// its first run's log says why.
		prev, _ := c.run("kubectl", "-n", namespace, "logs", "ds/"+release, "--previous", "--tail=30")
		pods, _ := c.run("kubectl", "-n", namespace, "get", "pods", "-l", "app.kubernetes.io/component=agent",
			"-o", "jsonpath={range .items[*]}{.metadata.name} restarts={.status.containerStatuses[0].restartCount} last={.status.containerStatuses[0].lastState}{\"\\n\"}{end}")
		// An old agent that was down when the rollout came (a crash, a
		// failed liveness probe) gets its replacement at once: its events
		// say so.
		events, _ := c.run("kubectl", "-n", namespace, "get", "events", "--field-selector", "involvedObject.name="+old.Items[0].Name)
		t.Fatalf("the new agent did not take over:\n%s\nagent pods:\n%s\nthe container's previous run:\n%s\nthe old pod's events:\n%s",
			tail(l, 20), pods, tail(prev, 30), tail(events, 20))
	}
	c.deletePod("team-a", "steady")

	step("the kubelet restarts: the plugin registers again")
	c.must("bash", "scripts/cluster.sh", "restart-kubelet")
	c.eventually("the node to be Ready again", 2*time.Minute, func() (bool, error) {
		n, err := c.cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	c.allocatable(128, 2*time.Minute)
	c.pythonPod("team-a", "after-restart", `[{"name":"r","dtype":"f32","shape":[8],"create":true}]`, `
c = memcuda.connect()
t = get(c, "r")
say("OPENED", t.info.name)
`)
	c.waitPhase("team-a", "after-restart", corev1.PodSucceeded, 2*time.Minute)
	if !strings.Contains(c.logs("team-a", "after-restart"), "OPENED team-a/r") {
		t.Fatal("a pod after the kubelet restart could not use the agent")
	}
	step("done")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func lastLine(s string) string { return tail(s, 1) }
