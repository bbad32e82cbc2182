package v1

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// CompactVector is one entry of testdata/compact.json, shared with the
// Python client: a response and its frame in the compact record layout.
type CompactVector struct {
	Name     string          `json:"name"`
	Message  json.RawMessage `json:"message"`
	FrameHex string          `json:"frame_hex"`
}

func compactMessages() []struct {
	name string
	resp *Response
} {
	vmm := Tensor{
		Name: "llama.layers.0.wq", UID: "a1b2c3d4e5f6-1", DType: BF16, Shape: []int64{4096, 4096}, Device: 1,
		DeviceUUID: "GPU-5a4b2e1c-0000-1111-2222-333344445555", Bytes: 33554432, IPCMode: ModeVMM,
		SegmentID: "vmm.a1b2c3d4e5f6.1.3", SegmentSize: 33554432, OwnerPID: 4242, Refcount: 2, State: StateReady,
		Agent: "a1b2c3d4e5f6", Node: "node-1", Ctime: 1795722236856, Mtime: 1795722236857,
	}
	legacy := vmm
	legacy.Name, legacy.Shape, legacy.Bytes, legacy.IPCMode, legacy.Offset, legacy.SegmentID = "team-a/kv/0", []int64{}, 2, ModeLegacy, 2097152, "legacy.a1b2c3d4e5f6.0.4"
	legacy.IPCHandle = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
	legacy.Tenant, legacy.Event, legacy.Refcount, legacy.DeviceUUID = "team-a", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==", 1, ""
	host := vmm
	host.Name, host.DType, host.Shape, host.Bytes, host.IPCMode, host.DeviceUUID = "ünï<&>", F32, []int64{2, 0, 3}, 0, ModeHost, ""
	host.IPCHandle, host.SegmentID, host.Node = "/memcuda.e10bbc3a.a1b2c3d4e5f6.1", "memcuda.e10bbc3a.a1b2c3d4e5f6.1", "nodé \"quoted\""
	return []struct {
		name string
		resp *Response
	}{
		{"vmm get with its descriptor", &Response{ID: 5, OK: true, Tensor: &vmm, FDs: []string{vmm.SegmentID}}},
		{"legacy scalar of a tenant, with an event", &Response{ID: 18446744073709551615, OK: true, Tensor: &legacy}},
		{"host, strings JSON would escape", &Response{ID: 7, OK: true, Tensor: &host, FDs: []string{host.SegmentID, "memcuda.x.2"}}},
	}
}

func TestCompactVectors(t *testing.T) {
	if *update {
		var out []CompactVector
		for _, v := range compactMessages() {
			frame, ok := AppendCompactResponse(nil, v.resp)
			if !ok {
				t.Fatalf("%s: not compact", v.name)
			}
			msg, _ := json.Marshal(v.resp)
			out = append(out, CompactVector{Name: v.name, Message: msg, FrameHex: hex.EncodeToString(frame)})
		}
		writeVectors(t, "testdata/compact.json", out)
	}
	for _, v := range readVectors[CompactVector](t, "testdata/compact.json", len(compactMessages())) {
		t.Run(v.Name, func(t *testing.T) {
			frame, _ := hex.DecodeString(v.FrameHex)
			h, body, err := ReadFrame(bytes.NewReader(frame))
			if err != nil {
				t.Fatal(err)
			}
			var want Response
			if err := json.Unmarshal(v.Message, &want); err != nil {
				t.Fatal(err)
			}
			if h.Kind != KindResponse || h.NumFDs != len(want.FDs) {
				t.Fatalf("header %+v for %d descriptors", h, len(want.FDs))
			}
			got, err := DecodeCompactResponse(body)
			if err != nil {
				t.Fatal(err)
			}
			if read, err := DecodeResponse(body); err != nil || !reflect.DeepEqual(read, got) {
				t.Fatalf("DecodeResponse read %+v (%v), not the compact record", read, err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("decoded %+v\nwant %+v", *got, want)
			}
			again, ok := AppendCompactResponse(nil, &want)
			if !ok || !bytes.Equal(again, frame) {
				t.Fatalf("re-encoding differs (ok %v):\n got %x\nwant %x", ok, again, frame)
			}
		})
	}
}

// Answers that are not one record, or whose strings hold the separator,
// stay JSON: AppendCompactResponse declines them and leaves dst alone.
func TestCompactDeclines(t *testing.T) {
	rec := compactMessages()[0].resp.Tensor
	sep := *rec
	sep.Node = "a\x1fb"
	bad := *rec
	bad.Agent = "a\xffb"
	for name, resp := range map[string]*Response{
		"no tensor":              {ID: 1, OK: true},
		"error":                  {ID: 1, Error: &Error{Code: "not_found", Message: "x"}},
		"a list":                 {ID: 1, OK: true, Tensors: []Tensor{*rec}},
		"a list page's tail":     {ID: 1, OK: true, Tensor: rec, Next: "x"},
		"a separator in a field": {ID: 1, OK: true, Tensor: &sep},
		"a field not UTF-8":      {ID: 1, OK: true, Tensor: &bad},
		"a ',' in a segment id":  {ID: 1, OK: true, Tensor: rec, FDs: []string{"a,b"}},
		"an empty segment id":    {ID: 1, OK: true, Tensor: rec, FDs: []string{""}},
		"hello":                  {ID: 1, OK: true, Hello: &Hello{}},
		"not ok":                 {ID: 1, Tensor: rec},
	} {
		dst := []byte("keep")
		out, ok := AppendCompactResponse(dst, resp)
		if ok || string(out) != "keep" {
			t.Errorf("%s: compact %v, %q", name, ok, out)
		}
	}
}

func TestCompactDecodeErrors(t *testing.T) {
	frame, _ := AppendCompactResponse(nil, compactMessages()[0].resp)
	good := string(frame[HeaderSize:])
	f := strings.Split(good[1:], "\x1f")
	with := func(i int, v string) string {
		g := append([]string(nil), f...)
		g[i] = v
		return "R" + strings.Join(g, "\x1f")
	}
	for name, body := range map[string]string{
		"JSON":               `{"id":1,"ok":true}`,
		"empty":              "",
		"too few fields":     "R" + strings.Join(f[:22], "\x1f"),
		"too many fields":    good + "\x1f",
		"bad id":             with(0, "-1"),
		"bad bytes":          with(7, "12a"),
		"bad shape":          with(4, "2,,3"),
		"bad refcount":       with(14, ""),
		"not UTF-8":          with(1, "\xff"),
		"empty segment id":   with(22, "a,"),
		"nine segment ids":   with(22, "a,b,c,d,e,f,g,h,i"),
		"overflowing offset": with(10, "18446744073709551616"),
	} {
		if resp, err := DecodeCompactResponse([]byte(body)); err == nil {
			t.Errorf("%s: decoded %+v", name, resp)
		}
	}
}

// Whatever a compact body decodes to encodes back to the same bytes, and
// no input makes the decoder panic.
func FuzzCompactResponse(f *testing.F) {
	for _, v := range compactMessages() {
		frame, _ := AppendCompactResponse(nil, v.resp)
		f.Add(frame[HeaderSize:])
	}
	f.Add([]byte("R1\x1f\x1f\x1f\x1f\x1f0\x1f\x1f0\x1f\x1f\x1f0\x1f\x1f0\x1f0\x1f0\x1f\x1f\x1f\x1f\x1f\x1f0\x1f0\x1f"))
	f.Fuzz(func(t *testing.T, body []byte) {
		resp, err := DecodeCompactResponse(body)
		if err != nil {
			return
		}
		frame, ok := AppendCompactResponse(nil, resp)
		if !ok {
			t.Fatalf("%q decoded to %+v, which does not encode", body, resp)
		}
		again, err := DecodeCompactResponse(frame[HeaderSize:])
		if err != nil || !reflect.DeepEqual(again, resp) {
			t.Fatalf("%q: decoded %+v, then %+v (%v)", body, resp, again, err)
		}
	})
}
