package cvatapi

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Version is a CVAT release number. Develop builds ("2.65.0.dev0") compare
// as their release.
type Version struct{ Major, Minor, Patch int }

// ParseVersion reads the leading X.Y[.Z] of CVAT's version string (a
// leading "v" is allowed); ok is false when there is none.
func ParseVersion(s string) (v Version, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(s), "v"), ".", 4)
	if len(parts) < 2 {
		return Version{}, false
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
				return Version{}, false
			}
			break
		}
		x, err := strconv.Atoi(digits[:end])
		if err != nil {
			return Version{}, false
		}
		n[i] = x
	}
	return Version{n[0], n[1], n[2]}, true
}

// AtLeast reports whether v is major.minor.patch or later.
func (v Version) AtLeast(major, minor, patch int) bool {
	if v.Major != major {
		return v.Major > major
	}
	if v.Minor != minor {
		return v.Minor > minor
	}
	return v.Patch >= patch
}

// String is "X.Y.Z".
func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Version returns the version of the CVAT server, from About (cached for
// Config.VersionTTL, and re-read when an export endpoint shows the server
// changed). An unparsable version string is an error.
func (c *Client) Version(ctx context.Context) (Version, error) {
	a, err := c.About(ctx)
	if err != nil {
		return Version{}, err
	}
	v, ok := ParseVersion(a.Version)
	if !ok {
		return Version{}, &unparsableVersionError{a.Version}
	}
	return v, nil
}

type unparsableVersionError struct{ version string }

func (e *unparsableVersionError) Error() string {
	return fmt.Sprintf("cvat: unparsable server version %q", e.version)
}

// aboutCache holds the last About answer; the caller holds Client.aboutMu.
type aboutCache struct {
	about   About
	fetched time.Time
}

// forgetVersion drops the cached About: the next call asks the server, as
// after an upgrade (or a rollback) under a running client.
func (c *Client) forgetVersion() {
	c.aboutMu.Lock()
	defer c.aboutMu.Unlock()
	c.about = nil
}
