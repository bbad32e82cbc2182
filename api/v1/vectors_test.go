package v1

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"reflect"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from vectorMessages")

// Vector is one entry of testdata/vectors.json, shared with the Python client.
type Vector struct {
	Name     string          `json:"name"`
	Kind     string          `json:"kind"` // request | response
	Message  json.RawMessage `json:"message"`
	NumFDs   int             `json:"num_fds"`
	FrameHex string          `json:"frame_hex"`
}

func vectorMessages() []struct {
	name string
	msg  any
} {
	info := Tensor{
		Name: "llama.layers.0.wq", UID: "a1b2c3d4e5f6-1", DType: BF16, Shape: []int64{4096, 4096}, Device: 0,
		DeviceUUID: "GPU-5a4b2e1c-0000-1111-2222-333344445555", Bytes: 33554432, IPCMode: ModeVMM, Offset: 0,
		SegmentID: "vmm.a1b2c3d4e5f6.3", SegmentSize: 33554432, OwnerPID: 4242, Refcount: 2, State: StateReady,
		Agent: "a1b2c3d4e5f6", Node: "node-1", Ctime: 1795722236856, Mtime: 1795722236857,
	}
	host := info
	host.Name, host.DType, host.Shape, host.Bytes, host.IPCMode = "demo", F32, []int64{2, 3}, 24, ModeHost
	host.IPCHandle, host.DeviceUUID, host.SegmentID, host.SegmentSize, host.Offset = "/memcuda.e10bbc3a.a1b2c3d4e5f6.1", "", "memcuda.e10bbc3a.a1b2c3d4e5f6.1", 2097152, 1024
	pieced := info
	pieced.Name, pieced.Shape, pieced.Bytes, pieced.Offset, pieced.SegmentID = "kv/cache", []int64{9, 1024, 1024}, 18874368, 4194304, "vmm.a1b2c3d4e5f6.5"
	pieced.SegmentSize = 20971520
	pieced.Pieces = []Piece{{SegmentID: "vmm.a1b2c3d4e5f6.5", SegmentSize: 20971520, Offset: 4194304, Size: 8388608},
		{SegmentID: "vmm.a1b2c3d4e5f6.9", SegmentSize: 20971520, Offset: 0, Size: 6291456},
		{SegmentID: "vmm.a1b2c3d4e5f6.12", SegmentSize: 4194304, Offset: 0, Size: 4194304}}
	return []struct {
		name string
		msg  any
	}{
		{"pieces request", &Request{ID: 21, Op: OpPieces}},
		{"get response of a tensor in pieces", &Response{ID: 5, OK: true, Tensor: &pieced, FDs: []string{"vmm.a1b2c3d4e5f6.5", "vmm.a1b2c3d4e5f6.12"}}},
		{"hello request", &Request{ID: 1, Op: OpHello, Client: "memcuda-py 0.1.0"}},
		{"create request", &Request{ID: 2, Op: OpCreate, Name: "llama.layers.0.wq", DType: "bf16", Shape: []int64{4096, 4096}, Device: "0"}},
		{"create scalar request", &Request{ID: 3, Op: OpCreate, Name: "step", DType: "i64"}},
		{"create by uuid request", &Request{ID: 4, Op: OpCreate, Name: "kv/0", DType: "f16", Shape: []int64{0, 8}, Device: "GPU-5a4b2e1c-0000-1111-2222-333344445555"}},
		{"get request", &Request{ID: 5, Op: OpGet, Name: "llama.layers.0.wq"}},
		{"release request", &Request{ID: 6, Op: OpRelease, Name: "llama.layers.0.wq"}},
		{"delete request", &Request{ID: 7, Op: OpDelete, Name: "demo"}},
		{"list request", &Request{ID: 8, Op: OpList}},
		{"stat request", &Request{ID: 9, Op: OpStat, Name: "demo"}},
		{"stats request", &Request{ID: 10, Op: OpStats}},
		{"gc request", &Request{ID: 11, Op: OpGC}},
		{"trim request", &Request{ID: 18446744073709551615, Op: OpTrim}},
		{"publish request", &Request{ID: 13, Op: OpPublish, Name: "kv/0", Event: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="}},
		{"release with event request", &Request{ID: 14, Op: OpRelease, Name: "kv/0", Event: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="}},
		{"forget request", &Request{ID: 15, Op: OpForget, Segment: "vmm.a1b2c3d4e5f6.0.3"}},
		{"list page request", &Request{ID: 16, Op: OpList, Prefix: "llama.layers.", Limit: 500, Cursor: "llama.layers.10.wq"}},
		{"list page response", &Response{ID: 16, OK: true, Tensors: []Tensor{host}, Next: "demo"}},
		{"holders request", &Request{ID: 17, Op: OpHolders, Name: "demo"}},
		{"holders response", &Response{ID: 17, OK: true, Holders: map[string]int64{"registry": 1, "conn:a1b2c3d4e5f6:3": 2}}},
		{"hello response", &Response{ID: 1, OK: true, Hello: &Hello{Version: 1, Agent: "a1b2c3d4e5f6", Node: "node-1", Mode: "host",
			Devices: []Device{{Index: 0, Name: "host", Total: 25769803776}}, PeerPID: 4242, Redis: true, Software: "memcuda-agent dev",
			Features: []string{"forget"}}}},
		{"get response with descriptor", &Response{ID: 5, OK: true, Tensor: &info, FDs: []string{"vmm.a1b2c3d4e5f6.3"}}},
		{"get host response without descriptor", &Response{ID: 5, OK: true, Tensor: &host}},
		{"error response", &Response{ID: 2, Error: &Error{Code: "already_exists", Message: `already exists: tensor "demo" exists as f32[2,3], not f16[2,3]`}}},
		{"list response", &Response{ID: 8, OK: true, Tensors: []Tensor{host}}},
		{"empty list response", &Response{ID: 8, OK: true}},
		{"stats response", &Response{ID: 10, OK: true, Stats: &Stats{Tensors: 1, Pools: []PoolStats{{Device: 0, Limit: 1 << 30, Allocated: 1024,
			Requested: 24, Reserved: 2097152, PeakAllocated: 1024, PeakReserved: 2097152, Segments: 1, ActiveBlocks: 1, FreeBlocks: 1,
			LargestFree: 2096128, Allocs: 1}}}}},
		{"gc response", &Response{ID: 11, OK: true, GC: &GCResult{Holders: 2, Freed: []string{"a", "b"}}}},
		{"trim response", &Response{ID: 12, OK: true, Trimmed: 2097152}},
		{"watch request", &Request{ID: 19, Op: OpWatch}},
		{"compact-records request", &Request{ID: 20, Op: OpCompactRecords}},
		{"watch news", &Response{OK: true, Pushed: []SegmentInfo{
			{ID: "vmm.a1b2c3d4e5f6.3", Size: 33554432, Device: 0, DeviceUUID: "GPU-5a4b2e1c-0000-1111-2222-333344445555", IPCMode: ModeVMM},
			{ID: "legacy.a1b2c3d4e5f6.4", Size: 2097152, Device: 1, IPCMode: ModeLegacy, IPCHandle: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="},
		}, FDs: []string{"vmm.a1b2c3d4e5f6.3"}, Gone: []string{"vmm.a1b2c3d4e5f6.1"}}},
	}
}

func encode(t *testing.T, msg any) ([]byte, string, int) {
	switch m := msg.(type) {
	case *Request:
		b, err := EncodeRequest(m)
		if err != nil {
			t.Fatal(err)
		}
		return b, "request", 0
	case *Response:
		b, err := EncodeResponse(m)
		if err != nil {
			t.Fatal(err)
		}
		return b, "response", len(m.FDs)
	}
	t.Fatalf("unknown message %T", msg)
	return nil, "", 0
}

// writeVectors rewrites a vector file (go test -update).
func writeVectors[V any](t *testing.T, path string, vecs []V) {
	t.Helper()
	b, _ := json.MarshalIndent(vecs, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readVectors reads a vector file, which must hold want vectors.
func readVectors[V any](t *testing.T, path string, want int) []V {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vecs []V
	if err := json.Unmarshal(b, &vecs); err != nil {
		t.Fatal(err)
	}
	if len(vecs) != want {
		t.Fatalf("%s: %d vectors on file, %d in the test: run go test -update", path, len(vecs), want)
	}
	return vecs
}

func TestVectors(t *testing.T) {
	if *update {
		var out []Vector
		for _, v := range vectorMessages() {
			frame, kind, nfd := encode(t, v.msg)
			body, _ := json.Marshal(v.msg)
			out = append(out, Vector{Name: v.name, Kind: kind, Message: body, NumFDs: nfd, FrameHex: hex.EncodeToString(frame)})
		}
		writeVectors(t, "testdata/vectors.json", out)
	}
	for _, v := range readVectors[Vector](t, "testdata/vectors.json", len(vectorMessages())) {
		t.Run(v.Name, func(t *testing.T) {
			frame, err := hex.DecodeString(v.FrameHex)
			if err != nil {
				t.Fatal(err)
			}
			h, body, err := ReadFrame(bytes.NewReader(frame))
			if err != nil {
				t.Fatal(err)
			}
			if h.NumFDs != v.NumFDs {
				t.Fatalf("header says %d descriptors, vector %d", h.NumFDs, v.NumFDs)
			}
			var msg any
			switch v.Kind {
			case "request":
				if h.Kind != KindRequest {
					t.Fatalf("kind %d", h.Kind)
				}
				req, err := DecodeRequest(body)
				if err != nil {
					t.Fatal(err)
				}
				var want Request
				if err := json.Unmarshal(v.Message, &want); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(*req, want) {
					t.Fatalf("decoded %+v, want %+v", *req, want)
				}
				msg = req
			case "response":
				resp, err := DecodeResponse(body)
				if err != nil {
					t.Fatal(err)
				}
				var want Response
				if err := json.Unmarshal(v.Message, &want); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(*resp, want) {
					t.Fatalf("decoded %+v, want %+v", *resp, want)
				}
				msg = resp
			}
			again, _, _ := encode(t, msg)
			if !bytes.Equal(again, frame) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, frame)
			}
		})
	}
}

func TestHeaderErrors(t *testing.T) {
	good, _ := EncodeRequest(&Request{ID: 1, Op: OpList})
	for _, tc := range []struct {
		name  string
		frame func([]byte) []byte
	}{
		{"magic", func(b []byte) []byte { b[0] = 'X'; return b }},
		{"version", func(b []byte) []byte { b[4] = 9; return b }},
		{"kind", func(b []byte) []byte { b[5] = 7; return b }},
		{"fds", func(b []byte) []byte { b[6] = MaxFDs + 1; return b }},
		{"reserved", func(b []byte) []byte { b[7] = 1; return b }},
		{"length", func(b []byte) []byte { b[8] = 0xff; return b }},
		{"short body", func(b []byte) []byte { return b[:len(b)-1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.frame(append([]byte{}, good...))
			if _, _, err := ReadFrame(bytes.NewReader(frame)); !errors.Is(err, ErrFrame) {
				t.Fatalf("err = %v, want ErrFrame", err)
			}
		})
	}
	if _, err := DecodeRequest([]byte(`{"id":1,"op":"get","nme":"x"}`)); !errors.Is(err, ErrFrame) {
		t.Fatalf("unknown field accepted: %v", err)
	}
	if _, err := DecodeRequest([]byte(`{"id":-1,"op":"get"}`)); !errors.Is(err, ErrFrame) {
		t.Fatalf("negative id accepted: %v", err)
	}
	if _, err := AppendFrame(nil, KindRequest, 0, make([]byte, MaxBody+1)); !errors.Is(err, ErrFrame) {
		t.Fatal("oversized body accepted")
	}
}

// FuzzReadFrame: arbitrary bytes never panic the decoder, and every frame
// that decodes into a request re-encodes to a frame that decodes the same.
func FuzzReadFrame(f *testing.F) {
	b, _ := os.ReadFile("testdata/vectors.json")
	var vecs []Vector
	json.Unmarshal(b, &vecs)
	for _, v := range vecs {
		frame, _ := hex.DecodeString(v.FrameHex)
		f.Add(frame)
	}
	f.Add([]byte("MCU1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, body, err := ReadFrame(bytes.NewReader(data))
		if err != nil || h.Kind != KindRequest {
			return
		}
		req, err := DecodeRequest(body)
		if err != nil {
			return
		}
		again, err := EncodeRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		_, body2, err := ReadFrame(bytes.NewReader(again))
		if err != nil {
			t.Fatal(err)
		}
		req2, err := DecodeRequest(body2)
		if err != nil || !reflect.DeepEqual(req, req2) {
			t.Fatalf("round trip: %+v -> %+v (%v)", req, req2, err)
		}
	})
}
