package inbox

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestReasonAttr(t *testing.T) {
	long := strings.Repeat("a", 1023) + "é" + "tail" // the cut at 1024 splits é
	got := reasonAttr(long)
	if len(got) > 1024 || !utf8.ValidString(got) || !strings.HasPrefix(got, strings.Repeat("a", 1023)) {
		t.Errorf("reasonAttr: %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
	}
	if got := reasonAttr("cvat: 500"); got != "cvat: 500" {
		t.Errorf("short reason changed: %q", got)
	}
}
