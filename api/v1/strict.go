package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// StrictUnmarshal decodes one JSON object into the struct v points to,
// strictly: every key must be one of the struct's JSON names, spelled
// exactly (encoding/json alone also takes "OP" for "op"), at most once
// (encoding/json alone keeps the last of duplicates), with values of the
// right types and nothing after the object.
func StrictUnmarshal(b []byte, v any) error {
	if err := checkKeys(b, jsonNames(reflect.TypeOf(v).Elem())); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkKeys reads the top-level keys of a JSON object and refuses
// duplicates and names not in names. Malformed JSON is left for the
// decoder to describe.
func checkKeys(b []byte, names map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		key, _ := tok.(string)
		if seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		seen[key] = true
		if !names[key] {
			if names[strings.ToLower(key)] {
				return fmt.Errorf("unknown field %q (fields are lower case: %q)", key, strings.ToLower(key))
			}
			return fmt.Errorf("unknown field %q", key)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

var namesByType sync.Map // reflect.Type -> map[string]bool

// jsonNames are the JSON names of a struct type's fields.
func jsonNames(t reflect.Type) map[string]bool {
	if m, ok := namesByType.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = true
	}
	namesByType.Store(t, m)
	return m
}
