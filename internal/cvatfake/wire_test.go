package cvatfake

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cvat-sync/cvat-sync/internal/payloads"
)

func mustParseOrdered(t testing.TB, b []byte) any {
	t.Helper()
	v, err := parseOrdered(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestPyJSONReproducesCVATBytes: decoding each payload CVAT sent and
// encoding it again with pyJSON gives the exact bytes.
func TestPyJSONReproducesCVATBytes(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(payloads.Dir(), "*.json"))
	if len(files) < 10 {
		t.Fatalf("found %d payload files", len(files))
	}
	newer, _ := filepath.Glob("testdata/payloads/*/*.json") // 2.73.0, post-#11104
	if len(newer) < 2 {
		t.Fatalf("found %d 2.73+ payload files", len(newer))
	}
	files = append(files, newer...)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pyJSON(mustParseOrdered(t, want))
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

// TestJSONBOrder: a payload read back from CVAT's jsonb column has CVAT's
// sample delivery's key order (shorter keys first, then bytewise).
func TestJSONBOrder(t *testing.T) {
	sent, err := os.ReadFile("testdata/payloads/v2.73.0/update_task.json")
	if err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile("testdata/api/webhook_deliveries_page_v2.73.json")
	if err != nil {
		t.Fatal(err)
	}
	results := mustParseOrdered(t, page).(ordered).get("results").([]any)
	stored := results[0].(ordered).get("request")
	want, _ := pyJSON(stored)
	got, _ := pyJSON(jsonbOrder(mustParseOrdered(t, sent)))
	if !bytes.Equal(got, want) {
		t.Errorf("jsonb order:\n got %s\nwant %s", got, want)
	}
}
