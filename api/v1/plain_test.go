package v1

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

// strictRequest is DecodeRequest without the reflection-free path.
func strictRequest(body []byte) (*Request, error) {
	var req Request
	err := StrictUnmarshal(body, &req)
	return &req, err
}

func TestDecodePlain(t *testing.T) {
	f, err := os.Open("testdata/plain_requests.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		want, body, _ := strings.Cut(line, " ")
		n++
		t.Run(body, func(t *testing.T) {
			got, ok := decodePlain([]byte(body))
			if ok != (want == "plain") {
				t.Fatalf("decodePlain took it: %v, want %s", ok, want)
			}
			strict, serr := strictRequest([]byte(body))
			dec, derr := DecodeRequest([]byte(body))
			if (serr == nil) != (derr == nil) || (serr == nil && !reflect.DeepEqual(strict, dec)) {
				t.Fatalf("DecodeRequest %+v (%v), strict decoder %+v (%v)", dec, derr, strict, serr)
			}
			if ok && !reflect.DeepEqual(&got, strict) {
				t.Fatalf("plain %+v, strict %+v", got, strict)
			}
		})
	}
	if n < 10 {
		t.Fatalf("only %d cases read", n)
	}
}

// FuzzDecodePlain: whatever the reflection-free decoder accepts, the strict
// decoder decodes to the same request.
func FuzzDecodePlain(f *testing.F) {
	for _, s := range []string{`{"id":1,"op":"get","name":"w"}`, `{"id":7,"op":"create","name":"w","dtype":"bf16","shape":[2,-3],"device":"0"}`,
		`{"id":2,"op":"hello","client":"x"}`, `{"id":9,"op":"release","name":"w","event":"QQ=="}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, ok := decodePlain(body)
		if !ok {
			return
		}
		strict, err := strictRequest(body)
		if err != nil || !reflect.DeepEqual(&got, strict) {
			t.Fatalf("%q: plain %+v, strict %+v (%v)", body, got, strict, err)
		}
	})
}

func plainInfo() Tensor {
	return Tensor{Name: "ns/w:v2", UID: "agent-abc-17", DType: "bf16", Shape: []int64{256, 1024}, Device: 1,
		DeviceUUID: "GPU-952e2206-aea1-40d5-a426-146df9c183e1", Bytes: 524288, IPCMode: "legacy", IPCHandle: "AAECAw+/=",
		Offset: 1 << 20, SegmentID: "agent-abc.s12", SegmentSize: 2 << 20, OwnerPID: 4242, Refcount: -1, State: "ready",
		Agent: "agent-abc", Node: "node-1", Tenant: "team-a", Event: "QQ==", Ctime: 1764200000000, Mtime: -1}
}

// Every answer the plain encoder writes is what json.Marshal writes; the
// others it leaves to json.Marshal.
func TestPlainResponseIsJSONMarshal(t *testing.T) {
	full := plainInfo()
	bare := Tensor{Name: "w", DType: "f32", Shape: []int64{}}
	noShape := Tensor{Name: "s"}
	for _, tc := range []struct {
		name  string
		resp  Response
		plain bool
	}{
		{"create answer with a descriptor", Response{ID: 7, OK: true, Tensor: &full, FDs: []string{"agent-abc.s12"}}, true},
		{"scalar, empty omitempty fields", Response{ID: 1 << 63, OK: true, Tensor: &bare}, true},
		{"nil shape", Response{ID: 2, OK: true, Tensor: &noShape}, true},
		{"release answer", Response{ID: 3, OK: true}, true},
		{"two descriptors", Response{ID: 4, OK: true, Tensor: &bare, FDs: []string{"a", "b"}}, true},
		{"error", Response{ID: 5, Error: &Error{Code: "not_found", Message: "no tensor"}}, false},
		{"list page", Response{ID: 6, OK: true, Tensors: []Tensor{full, bare, noShape}, Next: "s"}, true},
		{"last list page", Response{ID: 6, OK: true, Tensors: []Tensor{full}}, true},
		{"empty list", Response{ID: 6, OK: true, Tensors: []Tensor{}}, false},
		{"a list with a string to escape", Response{ID: 6, OK: true, Tensors: []Tensor{full, {Name: "x&y"}}}, false},
		{"holders", Response{ID: 6, OK: true, Holders: map[string]int64{"registry": 1}}, false},
		{"refused", Response{ID: 10, OK: false}, true},
		{"trim", Response{ID: 8, OK: true, Trimmed: 3}, false},
		{"a string to escape", Response{ID: 9, OK: true, Tensor: &Tensor{Name: "a<b", Node: "n\u00e9"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := json.Marshal(&tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := appendPlainResponse(nil, &tc.resp)
			if ok != tc.plain {
				t.Fatalf("plain = %v, want %v", ok, tc.plain)
			}
			if ok && string(got) != string(want) {
				t.Fatalf("plain encoder wrote\n%s\njson.Marshal\n%s", got, want)
			}
			frame, err := EncodeResponse(&tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			h, err := ParseHeader(frame)
			if err != nil || h.Kind != KindResponse || h.NumFDs != len(tc.resp.FDs) || string(frame[HeaderSize:]) != string(want) {
				t.Fatalf("frame %q (%+v, %v), want body %s", frame, h, err, want)
			}
			// Every body the plain encoder writes, the plain decoder reads
			// as encoding/json does.
			var std Response
			if err := json.Unmarshal(want, &std); err != nil {
				t.Fatal(err)
			}
			dec, plain := decodePlainResponse(want)
			if tc.plain && !plain {
				t.Fatal("the plain decoder refused what the plain encoder wrote")
			}
			if plain && !reflect.DeepEqual(dec, std) {
				t.Fatalf("plain decoder read\n%+v\nencoding/json\n%+v", dec, std)
			}
		})
	}
}

func FuzzPlainResponse(f *testing.F) {
	full := plainInfo()
	f.Add(uint64(7), true, full.Name, full.UID, string(full.DType), full.DeviceUUID, full.IPCHandle, full.Tenant, full.Event, int64(256), int64(-3), uint64(1<<40), "seg")
	f.Add(uint64(0), false, "", "", "", "", "", "", "", int64(0), int64(0), uint64(0), "")
	f.Fuzz(func(t *testing.T, id uint64, ok bool, name, uid, dtype, uuid, handle, tenant, event string, d0, d1 int64, n uint64, seg string) {
		info := plainInfo()
		info.Name, info.UID, info.DType, info.DeviceUUID, info.IPCHandle, info.Tenant, info.Event = name, uid, DType(dtype), uuid, handle, tenant, event
		info.Shape = []int64{d0, d1}[:min(2, int(n%3))]
		info.Bytes, info.Offset, info.Refcount = n, n/3, d1
		resp := Response{ID: id, OK: ok, Tensor: &info}
		if seg != "" {
			resp.FDs = []string{seg}
		}
		if n%5 == 0 { // a page of a list instead
			resp = Response{ID: id, OK: ok, Tensors: []Tensor{info, plainInfo()}, Next: seg}
		}
		want, err := json.Marshal(&resp)
		if err != nil {
			t.Fatal(err)
		}
		if got, plain := appendPlainResponse(nil, &resp); plain && string(got) != string(want) {
			t.Fatalf("plain encoder wrote\n%s\njson.Marshal\n%s", got, want)
		}
		// The plain decoder reads what encoding/json reads, or nothing.
		var std Response
		if err := json.Unmarshal(want, &std); err != nil {
			t.Fatal(err)
		}
		if got, plain := decodePlainResponse(want); plain && !reflect.DeepEqual(got, std) {
			t.Fatalf("plain decoder read\n%+v\nencoding/json\n%+v\nfrom %s", got, std, want)
		}
	})
}

func TestDecodeRequestRefusesRepeatedAndMisspeltKeys(t *testing.T) {
	for _, body := range []string{
		`{"id":1,"op":"get","op":"gc"}`,
		`{"id":1,"op":"get","name":"a","name":"b"}`,
		`{"id":1,"OP":"gc"}`,
		`{"ID":1,"op":"gc"}`,
		`{"id":1,"op":"list","limit":5,"limit":6}`,
	} {
		if req, err := DecodeRequest([]byte(body)); err == nil || !errors.Is(err, ErrFrame) {
			t.Errorf("DecodeRequest(%s) = %+v, %v; want a malformed-frame error", body, req, err)
		}
	}
	if _, err := DecodeRequest([]byte(`{"op":"gc","id":1}`)); err != nil {
		t.Errorf("keys in another order are fine: %v", err)
	}
}
