// Package errdefs defines the error classes shared by every layer of mem-cuda.
//
// Layers wrap these sentinels with %w and context; only the API edges (the
// client socket, the command queue replies, the CLI exit codes) turn them into
// wire codes with Code, and clients turn wire codes back with FromCode.
package errdefs

import (
	"context"
	"errors"
	"fmt"
)

// Error classes. Each maps to one stable wire code.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrOutOfMemory        = errors.New("out of memory")
	ErrUnavailable        = errors.New("unavailable")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnimplemented      = errors.New("unimplemented")
	ErrInternal           = errors.New("internal")
)

// Wire codes, as they appear in replies and in docs/redis-protocol.md.
const (
	CodeOK                 = "ok"
	CodeInvalidArgument    = "invalid_argument"
	CodeNotFound           = "not_found"
	CodeAlreadyExists      = "already_exists"
	CodeFailedPrecondition = "failed_precondition"
	CodeOutOfMemory        = "out_of_memory"
	CodeUnavailable        = "unavailable"
	CodePermissionDenied   = "permission_denied"
	CodeUnimplemented      = "unimplemented"
	CodeDeadlineExceeded   = "deadline_exceeded"
	CodeInternal           = "internal"
)

var classes = []struct {
	err  error
	code string
}{
	{ErrInvalidArgument, CodeInvalidArgument},
	{ErrNotFound, CodeNotFound},
	{ErrAlreadyExists, CodeAlreadyExists},
	{ErrFailedPrecondition, CodeFailedPrecondition},
	{ErrOutOfMemory, CodeOutOfMemory},
	{ErrUnavailable, CodeUnavailable},
	{ErrPermissionDenied, CodePermissionDenied},
	{ErrUnimplemented, CodeUnimplemented},
	{context.DeadlineExceeded, CodeDeadlineExceeded},
	{ErrInternal, CodeInternal},
}

// Code returns the wire code of err's class; unclassified errors are internal.
func Code(err error) string {
	if err == nil {
		return CodeOK
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// RemoteError is an error received from the agent: its wire code and message.
// It unwraps to the matching class so callers can use errors.Is.
type RemoteError struct {
	Code    string
	Message string
}

// Error is the agent's message, which already names the error class.
func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the error class of the code.
func (e *RemoteError) Unwrap() error {
	for _, c := range classes {
		if c.code == e.Code {
			return c.err
		}
	}
	return ErrInternal
}

// FromCode builds the error a client returns for a wire code and message.
func FromCode(code, message string) error {
	if code == CodeOK || code == "" {
		return nil
	}
	return &RemoteError{Code: code, Message: message}
}

// Invalid wraps ErrInvalidArgument with a formatted message.
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}
