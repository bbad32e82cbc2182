package v1

import (
	"bufio"
	"os"
	"reflect"
	"strings"
	"testing"
)

// strictRequest is DecodeRequest without the reflection-free path.
func strictRequest(body []byte) (*Request, error) {
	var req Request
	err := strictUnmarshal(body, &req)
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
