package v1

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Frame constants.
const (
	Magic        = "MCU1"
	Version      = 1
	HeaderSize   = 12
	MaxBody      = 1 << 20
	MaxFDs       = 8
	KindRequest  = 1
	KindResponse = 2
)

// ErrFrame is the class of every malformed-frame error.
var ErrFrame = errors.New("malformed frame")

// Header is a decoded frame header.
type Header struct {
	Kind    byte
	NumFDs  int
	BodyLen int
}

// AppendFrame appends a frame of kind around body to dst.
func AppendFrame(dst []byte, kind byte, numFDs int, body []byte) ([]byte, error) {
	dst, err := appendHeader(dst, kind, numFDs, len(body))
	if err != nil {
		return nil, err
	}
	return append(dst, body...), nil
}

// appendHeader appends the header of a frame whose body is bodyLen bytes.
func appendHeader(dst []byte, kind byte, numFDs, bodyLen int) ([]byte, error) {
	if bodyLen > MaxBody {
		return nil, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrFrame, bodyLen, MaxBody)
	}
	if numFDs < 0 || numFDs > MaxFDs {
		return nil, fmt.Errorf("%w: %d descriptors, at most %d", ErrFrame, numFDs, MaxFDs)
	}
	dst = append(dst, Magic...)
	dst = append(dst, Version, kind, byte(numFDs), 0)
	return binary.BigEndian.AppendUint32(dst, uint32(bodyLen)), nil
}

// ParseHeader decodes and checks a 12-byte header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrFrame, len(b))
	}
	if string(b[:4]) != Magic {
		return Header{}, fmt.Errorf("%w: bad magic %q", ErrFrame, b[:4])
	}
	if b[4] != Version {
		return Header{}, fmt.Errorf("%w: protocol version %d, this side speaks %d", ErrFrame, b[4], Version)
	}
	if b[5] != KindRequest && b[5] != KindResponse {
		return Header{}, fmt.Errorf("%w: unknown frame kind %d", ErrFrame, b[5])
	}
	if b[6] > MaxFDs {
		return Header{}, fmt.Errorf("%w: %d descriptors, at most %d", ErrFrame, b[6], MaxFDs)
	}
	if b[7] != 0 {
		return Header{}, fmt.Errorf("%w: reserved byte is %d", ErrFrame, b[7])
	}
	n := binary.BigEndian.Uint32(b[8:12])
	if n > MaxBody {
		return Header{}, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrFrame, n, MaxBody)
	}
	return Header{Kind: b[5], NumFDs: int(b[6]), BodyLen: int(n)}, nil
}

// ReadFrame reads one frame (without descriptors) from r.
func ReadFrame(r io.Reader) (Header, []byte, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		return h, nil, err
	}
	body := make([]byte, h.BodyLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return h, nil, fmt.Errorf("%w: short body: %w", ErrFrame, err)
	}
	return h, body, nil
}

// EncodeRequest encodes a request frame.
func EncodeRequest(req *Request) ([]byte, error) { return EncodeRequestFDs(req, 0) }

// EncodeRequestFDs encodes a request frame announcing numFDs descriptors
// (an offer's).
func EncodeRequestFDs(req *Request, numFDs int) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return AppendFrame(nil, KindRequest, numFDs, body)
}

// EncodeResponse encodes a response frame announcing len(resp.FDs) descriptors.
func EncodeResponse(resp *Response) ([]byte, error) {
	return AppendResponse(make([]byte, 0, 1024+512*len(resp.Tensors)), resp)
}

// AppendResponse appends a response frame announcing len(resp.FDs)
// descriptors to dst (a server reuses one buffer for its answers).
func AppendResponse(dst []byte, resp *Response) ([]byte, error) {
	// The body is written after room for the header, and the header in
	// front of it once the body's length is known.
	start := len(dst)
	if frame, ok := appendPlainResponse(append(dst, make([]byte, HeaderSize)...), resp); ok {
		if _, err := appendHeader(frame[start:start], KindResponse, len(resp.FDs), len(frame)-start-HeaderSize); err != nil {
			return nil, err
		}
		return frame, nil
	}
	body, err := json.Marshal(resp)
	if err != nil {
		return nil, err
	}
	return AppendFrame(dst, KindResponse, len(resp.FDs), body)
}

// DecodeRequest decodes a request body strictly: unknown, misspelt or
// repeated keys, wrong types and trailing data are errors.
func DecodeRequest(body []byte) (*Request, error) {
	var req Request
	if err := DecodeRequestInto(body, &req); err != nil {
		return nil, err
	}
	return &req, nil
}

// DecodeRequestInto is DecodeRequest into req, which it overwrites whole
// (a server reuses one Request per connection).
func DecodeRequestInto(body []byte, req *Request) error {
	var ok bool
	if *req, ok = decodePlain(body); ok {
		return nil
	}
	*req = Request{}
	if err := StrictUnmarshal(body, req); err != nil {
		return fmt.Errorf("%w: request body: %w", ErrFrame, err)
	}
	return nil
}

// DecodeResponse decodes a response body: JSON, or a compact record
// (DecodeCompactResponse), told apart by the first byte.
func DecodeResponse(body []byte) (*Response, error) {
	if IsCompact(body) {
		return DecodeCompactResponse(body)
	}
	if resp, ok := decodePlainResponse(body); ok {
		return &resp, nil
	}
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("%w: response body: %w", ErrFrame, err)
	}
	return &resp, nil
}
