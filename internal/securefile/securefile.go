// Package securefile reads small secret files, such as key files and trust
// configuration, after checking that only their owner could have written or
// read them.
//
// [ReadPrivate] resolves the path it is given once, opens the result without
// following a symbolic link and without blocking, checks the open file itself
// (fstat of the descriptor), and reads from that same descriptor. The bytes
// returned are those of the file that passed the checks: swapping a link or a
// file between the check and the read does not change what is read.
//
// On Unix the file must be a regular file owned by the effective user or by
// root, with no permission bits for group or others. On other systems
// (Windows) only the regular-file and size checks are made: access there is
// governed by ACLs, which this package does not inspect.
package securefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
)

// The errors of [ReadPrivate], for [errors.Is]. Each error returned names
// the file, the problem and the fix, and never holds any of its content.
var (
	// ErrNotRegular means the path names a directory, named pipe, device
	// or other file that is not a regular file.
	ErrNotRegular = errors.New("not a regular file")
	// ErrOwner means the file belongs to a user other than the effective
	// user and root.
	ErrOwner = errors.New("file owned by another user")
	// ErrInsecureMode means group or others have permissions on the file.
	ErrInsecureMode = errors.New("file readable by group or others")
	// ErrTooLarge means the file is over the size limit.
	ErrTooLarge = errors.New("file too large")
)

// ReadPrivate reads the file at path, of at most limit bytes, if it is
// private to the user.
//
// A path with symbolic links in it (as secret mounts are) is resolved once,
// with [filepath.EvalSymlinks]; resolved is the result, the file the data was
// read from. A caller that writes the file back should write to resolved, so
// that a link stays a link. ReadPrivate then opens resolved without following
// a symbolic link and without blocking (a named pipe does not hang it), and
// on the open descriptor checks that:
//
//   - it is a regular file, else [ErrNotRegular];
//   - it belongs to the effective user or to root, else [ErrOwner] (Unix);
//   - group and others have no permission bits (mode&0o077 == 0), else
//     [ErrInsecureMode], with the fix "chmod 600 PATH" (Unix);
//   - it holds at most limit bytes, else [ErrTooLarge].
//
// A missing file (or a link to one) gives an error matching
// [fs.ErrNotExist]. Errors other than these come from the file system.
//
// Only the last element of resolved is opened without following links: the
// directories above it are trusted. A user who may write to one of them can
// still swap in another file, though only one that belongs to the user or
// to root and passes the other checks.
func ReadPrivate(path string, limit int64) (data []byte, resolved string, err error) {
	resolved, err = filepath.EvalSymlinks(path)
	if err != nil {
		return nil, "", err
	}
	name := path
	if resolved != filepath.Clean(path) {
		name = fmt.Sprintf("%s (a link to %s)", path, resolved)
	}
	f, err := open(resolved, name)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	if !fi.Mode().IsRegular() {
		return nil, "", fmt.Errorf("%w: %s is %s; give the path of a regular file", ErrNotRegular, name, kind(fi.Mode()))
	}
	if err := checkAccess(fi, path, name); err != nil {
		return nil, "", err
	}
	if fi.Size() > limit {
		return nil, "", tooLarge(name, limit)
	}
	data, err = io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = tooLarge(name, limit)
	}
	if err != nil {
		clear(data)
		return nil, "", err
	}
	return data, resolved, nil
}

func tooLarge(name string, limit int64) error {
	return fmt.Errorf("%w: %s is over the limit of %d bytes; check that it is the right file", ErrTooLarge, name, limit)
}

// kind describes a file that is not regular.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "not a regular file"
	}
}
