// Package testvec reads and writes the files of kpcrypt's test vectors
// (FORMAT.md §6): "key: value" lines, an empty line, then the raw bytes of
// the vector. The stream and envelope tests each give the fields their
// meaning.
package testvec

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Field is one "key: value" line.
type Field struct{ Key, Value string }

// Pairs makes fields from alternating keys and values.
func Pairs(kv ...string) []Field {
	fs := make([]Field, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		fs = append(fs, Field{Key: kv[i], Value: kv[i+1]})
	}
	return fs
}

// File is one vector file.
type File struct {
	// Name is the file's name without its .vec extension.
	Name   string
	Fields []Field
	Body   []byte
}

// Marshal encodes f.
func (f *File) Marshal() []byte {
	var b bytes.Buffer
	for _, fd := range f.Fields {
		fmt.Fprintf(&b, "%s: %s\n", fd.Key, fd.Value)
	}
	b.WriteString("\n")
	b.Write(f.Body)
	return b.Bytes()
}

// Parse decodes a vector file named name.
func Parse(name string, data []byte) (*File, error) {
	f := &File{Name: name}
	for {
		line, rest, ok := bytes.Cut(data, []byte("\n"))
		if !ok {
			return nil, fmt.Errorf("%s: unterminated preamble", name)
		}
		data = rest
		if len(line) == 0 {
			break
		}
		key, value, ok := strings.Cut(string(line), ": ")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", name, line)
		}
		f.Fields = append(f.Fields, Field{Key: key, Value: value})
	}
	f.Body = data
	return f, nil
}

// ReadDir reads every *.vec file in dir, in name order. A directory without
// any is an error.
func ReadDir(dir string) ([]*File, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.vec"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no test vectors in %s", dir)
	}
	var fs []*File
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		f, err := Parse(strings.TrimSuffix(filepath.Base(p), ".vec"), data)
		if err != nil {
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}
