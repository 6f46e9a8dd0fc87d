package event

import (
	"encoding/json"
	"strconv"
)

// maxDepth is encoding/json's nesting limit: bodies it refuses for depth are
// refused here too.
const maxDepth = 10000

// syntaxError reports where a body stops being JSON (the offset only: the
// body itself is never quoted).
type syntaxError struct{ offset int }

func (e *syntaxError) Error() string {
	return "invalid JSON at byte " + strconv.Itoa(e.offset)
}

// scanner validates JSON exactly as encoding/json.Valid does (RFC 8259,
// strings not checked for UTF-8, nesting at most maxDepth) in one pass and
// without allocating, and hands the members of objects to a callback so a
// caller can pick the few values it needs. encoding/json's Unmarshal into a
// struct of RawMessages scanned every body three times (validate, decode,
// then each nested object again) and was most of a ping's cost.
type scanner struct {
	data  []byte
	depth int
}

// member is called for each member of an object with the key's raw bytes
// (without quotes; escaped is true when they hold a backslash) and the span
// [vs, ve) of the value.
type member func(key []byte, escaped bool, vs, ve int)

// nested, given a member's key, returns the member function for the members
// of its value when that is an object, or nil: a caller reads a nested
// object's fields in the same pass.
type nested func(key []byte, escaped bool) member

func (s *scanner) fail(i int) error { return &syntaxError{offset: i} }

func (s *scanner) ws(i int) int {
	for i < len(s.data) {
		switch s.data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value validates the value starting at data[i] (no leading whitespace) and
// returns the offset just after it.
func (s *scanner) value(i int) (int, error) {
	if i >= len(s.data) {
		return i, s.fail(i)
	}
	switch c := s.data[i]; {
	case c == '{':
		return s.object(i, nil, nil)
	case c == '[':
		return s.array(i)
	case c == '"':
		end, _, err := s.str(i)
		return end, err
	case c == '-' || c >= '0' && c <= '9':
		return s.number(i)
	case c == 't':
		return s.literal(i, "true")
	case c == 'f':
		return s.literal(i, "false")
	case c == 'n':
		return s.literal(i, "null")
	}
	return i, s.fail(i)
}

// object validates the object at data[i] ('{') and calls fn, if not nil, for
// each member; in, if not nil, chooses the member function of values that
// are objects themselves.
func (s *scanner) object(i int, fn member, in nested) (int, error) {
	if s.depth++; s.depth > maxDepth {
		return i, s.fail(i)
	}
	defer func() { s.depth-- }()
	i = s.ws(i + 1)
	if i < len(s.data) && s.data[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(s.data) || s.data[i] != '"' {
			return i, s.fail(i)
		}
		ks := i + 1
		ke, escaped, err := s.str(i)
		if err != nil {
			return ke, err
		}
		i = s.ws(ke)
		if i >= len(s.data) || s.data[i] != ':' {
			return i, s.fail(i)
		}
		vs := s.ws(i + 1)
		var ve int
		if in != nil && vs < len(s.data) && s.data[vs] == '{' {
			ve, err = s.object(vs, in(s.data[ks:ke-1], escaped), nil)
		} else {
			ve, err = s.value(vs)
		}
		if err != nil {
			return ve, err
		}
		if fn != nil {
			fn(s.data[ks:ke-1], escaped, vs, ve)
		}
		i = s.ws(ve)
		if i >= len(s.data) {
			return i, s.fail(i)
		}
		switch s.data[i] {
		case ',':
			i = s.ws(i + 1)
		case '}':
			return i + 1, nil
		default:
			return i, s.fail(i)
		}
	}
}

func (s *scanner) array(i int) (int, error) {
	if s.depth++; s.depth > maxDepth {
		return i, s.fail(i)
	}
	defer func() { s.depth-- }()
	i = s.ws(i + 1)
	if i < len(s.data) && s.data[i] == ']' {
		return i + 1, nil
	}
	for {
		end, err := s.value(i)
		if err != nil {
			return end, err
		}
		i = s.ws(end)
		if i >= len(s.data) {
			return i, s.fail(i)
		}
		switch s.data[i] {
		case ',':
			i = s.ws(i + 1)
		case ']':
			return i + 1, nil
		default:
			return i, s.fail(i)
		}
	}
}

// str validates the string at data[i] ('"') and returns the offset after its
// closing quote and whether it holds escapes or bytes outside printable
// ASCII (which need encoding/json's decoding rules).
func (s *scanner) str(i int) (end int, special bool, err error) {
	i++
	for i < len(s.data) {
		c := s.data[i]
		if plain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, special, nil
		case c == '\\':
			special = true
			i++
			if i >= len(s.data) {
				return i, special, s.fail(i)
			}
			switch s.data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				for k := 1; k <= 4; k++ {
					if i+k >= len(s.data) || !isHex(s.data[i+k]) {
						return i + k, special, s.fail(i + k)
					}
				}
				i += 5
			default:
				return i, special, s.fail(i)
			}
		case c < 0x20:
			return i, special, s.fail(i)
		default:
			if c >= 0x80 {
				special = true
			}
			i++
		}
	}
	return i, special, s.fail(i)
}

// plain marks the bytes a string holds as they are: printable ASCII but the
// quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number validates -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *scanner) number(i int) (int, error) {
	d := s.data
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	default:
		return i, s.fail(i)
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return i, s.fail(i)
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return i, s.fail(i)
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	return i, nil
}

func (s *scanner) literal(i int, lit string) (int, error) {
	if len(s.data)-i < len(lit) || string(s.data[i:i+len(lit)]) != lit {
		return i, s.fail(i)
	}
	return i + len(lit), nil
}

// members calls fn for each member of raw, an object already validated.
func members(raw []byte, fn member) {
	if len(raw) == 0 || raw[0] != '{' {
		return
	}
	s := scanner{data: raw}
	_, _ = s.object(0, fn, nil)
}

// keyIs reports whether a member's key is name, decoding escapes the way
// encoding/json does when there are any.
func keyIs(key []byte, escaped bool, name string) bool {
	if !escaped {
		return string(key) == name
	}
	return unquote(key) == name
}

// unquote decodes the inside of a validated JSON string with encoding/json's
// rules (escapes, surrogates, invalid UTF-8 replaced); only used for strings
// that hold escapes or non-ASCII bytes.
func unquote(inner []byte) string {
	q := make([]byte, 0, len(inner)+2)
	q = append(q, '"')
	q = append(q, inner...)
	q = append(q, '"')
	var out string
	_ = json.Unmarshal(q, &out)
	return out
}

// stringValue returns raw as a string if it is a JSON string, else "".
func stringValue(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' || c >= 0x80 {
			return unquote(inner)
		}
	}
	return string(inner)
}
