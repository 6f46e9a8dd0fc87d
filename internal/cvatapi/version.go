package cvatapi

import (
	"strconv"
	"strings"
)

// version is a CVAT release number; develop builds ("2.65.0.dev0") compare
// as their release.
type version struct{ major, minor, patch int }

// parseVersion reads the leading X.Y[.Z] of CVAT's version string.
func parseVersion(s string) (version, bool) {
	parts := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(s), "v"), ".", 4)
	if len(parts) < 2 {
		return version{}, false
	}
	var n [3]int
	for i := 0; i < 3 && i < len(parts); i++ {
		digits := parts[i]
		end := 0
		for end < len(digits) && digits[end] >= '0' && digits[end] <= '9' {
			end++
		}
		if end == 0 {
			if i < 2 {
				return version{}, false
			}
			break
		}
		v, err := strconv.Atoi(digits[:end])
		if err != nil {
			return version{}, false
		}
		n[i] = v
	}
	return version{n[0], n[1], n[2]}, true
}

func (v version) atLeast(major, minor int) bool {
	return v.major > major || (v.major == major && v.minor >= minor)
}
