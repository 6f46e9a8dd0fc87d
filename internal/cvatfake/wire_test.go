package cvatfake

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// decodeOrdered parses JSON keeping key order (objects become ordered,
// numbers json.Number), so re-encoding can be compared byte for byte.
func decodeOrdered(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch d := tok.(type) {
	case json.Delim:
		if d == '[' {
			arr := []any{}
			for dec.More() {
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := dec.Token()
			return arr, err
		}
		obj := ordered{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			v, err := decodeOrdered(dec)
			if err != nil {
				return nil, err
			}
			obj = append(obj, pair{k.(string), v})
		}
		_, err := dec.Token()
		return obj, err
	default:
		return tok, nil
	}
}

func parseOrdered(t testing.TB, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeOrdered(dec)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestPyJSONReproducesCVATBytes: decoding each payload CVAT sent and
// encoding it again with pyJSON gives the exact bytes.
func TestPyJSONReproducesCVATBytes(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/payloads/*.json")
	if len(files) < 10 {
		t.Fatalf("found %d payload files", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pyJSON(parseOrdered(t, want))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("pyJSON differs:\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestPyJSONEscapes(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"separators", ordered{{"a", []any{1, "x, y: z"}}, {"b", nil}}, `{"a": [1, "x, y: z"], "b": null}`},
		{"non-ASCII", "Zürich ☃", `"Z\u00fcrich \u2603"`},
		{"astral plane", "😀", `"\ud83d\ude00"`},
		{"no HTML escaping", "<a&b>", `"<a&b>"`},
		{"escaped quote then colon", `say "a":b`, `"say \"a\":b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pyJSON(tt.in)
			if err != nil || string(got) != tt.want {
				t.Errorf("pyJSON = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestCVATTime(t *testing.T) {
	for in, want := range map[time.Time]string{
		time.Date(2026, 5, 4, 9, 41, 27, 118604000, time.UTC): "2026-05-04T09:41:27.118604Z",
		time.Date(2022, 3, 5, 9, 33, 10, 420000000, time.UTC): "2022-03-05T09:33:10.420000Z",
		time.Date(2022, 3, 5, 9, 33, 10, 0, time.UTC):         "2022-03-05T09:33:10Z",
	} {
		if got := cvatTime(in); got != want {
			t.Errorf("cvatTime(%v) = %s, want %s", in, got, want)
		}
	}
}
