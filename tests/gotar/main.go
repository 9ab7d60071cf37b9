// Command gotar prints how Go's archive/tar, the reader the Docker engine
// extracts with (moby pkg/archive), reads the tar stream on stdin.
//
// One JSON object per member, then one final {"end": "ok"} or {"end": "<error>"}.
// Byte strings (names, link targets, xattr names and values) are hex-encoded,
// because Go's JSON encoder replaces invalid UTF-8. "data" is the SHA-256 of the
// member's content as Go reads it. Standard library only: the test builds it
// with Debian's golang-go and no module download.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"sort"
)

import "archive/tar"

type member struct {
	Name     string     `json:"name"`
	Type     int        `json:"type"`
	Link     string     `json:"link"`
	Size     int64      `json:"size"`
	Mode     int64      `json:"mode"`
	UID      int        `json:"uid"`
	GID      int        `json:"gid"`
	Mtime    int64      `json:"mtime"`
	Devmajor int64      `json:"devmajor"`
	Devminor int64      `json:"devminor"`
	Xattrs   [][]string `json:"xattrs"`
	Data     string     `json:"data"`
}

func hexs(s string) string { return hex.EncodeToString([]byte(s)) }

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	reader := tar.NewReader(bufio.NewReader(os.Stdin))
	for {
		hdr, err := reader.Next()
		if err == io.EOF {
			enc.Encode(map[string]string{"end": "ok"})
			return
		}
		if err != nil {
			enc.Encode(map[string]string{"end": err.Error()})
			return
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, reader); err != nil {
			enc.Encode(map[string]string{"end": err.Error()})
			return
		}
		// moby applies hdr.Xattrs (the SCHILY.xattr.* PAX records), in map order.
		keys := make([]string, 0, len(hdr.Xattrs))
		for k := range hdr.Xattrs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		xattrs := [][]string{}
		for _, k := range keys {
			xattrs = append(xattrs, []string{hexs(k), hexs(hdr.Xattrs[k])})
		}
		enc.Encode(member{
			Name: hexs(hdr.Name), Type: int(hdr.Typeflag), Link: hexs(hdr.Linkname),
			Size: hdr.Size, Mode: hdr.Mode, UID: hdr.Uid, GID: hdr.Gid,
			Mtime: hdr.ModTime.Unix(), Devmajor: hdr.Devmajor, Devminor: hdr.Devminor,
			Xattrs: xattrs, Data: hex.EncodeToString(sum.Sum(nil)),
		})
	}
}
