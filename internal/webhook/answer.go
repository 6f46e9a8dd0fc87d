package webhook

import (
	"strconv"
	"unicode/utf8"
)

// answer is the JSON body of every webhook answer; empty fields are left out.
type answer struct {
	status, event string
	taskID        int64
	requestID     string
	err           string
}

// appendAnswer appends a's JSON, as encoding/json would write the struct
// {status, event, task_id, request_id, error} with omitempty, without its
// reflection and allocations.
func appendAnswer(b []byte, a answer) []byte {
	b = append(b, '{')
	n := 0
	for _, f := range []struct{ key, val string }{{"status", a.status}, {"event", a.event}} {
		if f.val != "" {
			b = appendKey(b, f.key, &n)
			b = appendString(b, f.val)
		}
	}
	if a.taskID != 0 {
		b = appendKey(b, "task_id", &n)
		b = strconv.AppendInt(b, a.taskID, 10)
	}
	for _, f := range []struct{ key, val string }{{"request_id", a.requestID}, {"error", a.err}} {
		if f.val != "" {
			b = appendKey(b, f.key, &n)
			b = appendString(b, f.val)
		}
	}
	return append(b, '}')
}

func appendKey(b []byte, key string, n *int) []byte {
	if *n > 0 {
		b = append(b, ',')
	}
	*n++
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does: HTML
// characters and U+2028/U+2029 escaped, invalid UTF-8 as U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
