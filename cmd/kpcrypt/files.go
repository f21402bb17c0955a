package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kpcrypt/kpcrypt/internal/atomicfile"
	"github.com/kpcrypt/kpcrypt/internal/filelock"
)

// input is the command's input: a file or standard input.
type input struct {
	io.Reader
	name string // for messages: the path, or "standard input"
	file *os.File
	size int64 // -1 when unknown
}

func openInput(u *ui, path string) (*input, error) {
	if path == "" || path == "-" {
		in := &input{Reader: u.stdin, name: "standard input", size: -1}
		if f, ok := u.stdin.(*os.File); ok {
			in.file = f
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
				in.size = fi.Size()
			}
		}
		return in, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%s is a directory", path)
	}
	size := int64(-1)
	if fi.Mode().IsRegular() {
		size = fi.Size()
	}
	return &input{Reader: f, name: path, file: f, size: size}, nil
}

// lockShared takes a shared lock on a regular input file, for as long as
// its header is read, and returns the function that releases it. Other
// inputs (pipes, terminals) need none.
func (in *input) lockShared(ctx context.Context) (func(), error) {
	if !in.regular() {
		return func() {}, nil
	}
	if err := filelock.Lock(ctx, in.file, false); err != nil {
		if errors.Is(err, filelock.ErrUnsupported) {
			return func() {}, nil
		}
		return nil, fmt.Errorf("%s: waiting for a rewrap of the file to end: %w", in.name, err)
	}
	return func() { filelock.Unlock(in.file) }, nil
}

func (in *input) Close() {
	if in.file != nil && in.name != "standard input" {
		in.file.Close()
	}
}

// output is the command's output: a file written atomically, or standard
// output.
type output struct {
	w      io.Writer
	atomic *atomicfile.File
}

// openOutput checks that the output may be written, before any KEK is
// called, and opens it.
func openOutput(u *ui, path string, in *input, force bool, perm os.FileMode) (*output, error) {
	if path == "" || path == "-" {
		return &output{w: u.stdout}, nil
	}
	if in.file != nil {
		if ofi, err := os.Stat(path); err == nil {
			if ifi, err := in.file.Stat(); err == nil && os.SameFile(ifi, ofi) {
				return nil, fmt.Errorf("%s: input and output are the same file", path)
			}
		}
	}
	f, err := atomicfile.Create(path, perm, force)
	if err != nil {
		return nil, outputError(path, err)
	}
	return &output{w: f, atomic: f}, nil
}

// commit puts a file output in place. A directory that could not be
// synced after the file was put in place is a warning, not a failure: the
// file is there, and saying otherwise would mislead.
func (o *output) commit(u *ui) error {
	if o.atomic == nil {
		return nil
	}
	err := o.atomic.Commit()
	if errors.Is(err, atomicfile.ErrNotDurable) {
		u.infof("warning: %v", err)
		return nil
	}
	return err
}

// abort removes a file output that was not committed.
func (o *output) abort() {
	if o.atomic != nil {
		o.atomic.Abort()
	}
}

func (o *output) Write(p []byte) (int, error) { return o.w.Write(p) }

// ctxReader fails reads once ctx is done, so that an interrupt stops a long
// copy and the output is removed.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// fileSource is a regular input file as the library reads it: with Read,
// and with ReadAt from its workers, concurrently (see
// envelope.Writer.ReadFrom and envelope.Decrypter.NewReader). Every read
// checks ctx, so that an interrupt stops the copy between chunks, and
// counts the progress.
type fileSource struct {
	f   *os.File
	ctx context.Context
	add func(int) // nil, or safe for concurrent use
}

func (s *fileSource) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.f.Read(p)
	if s.add != nil {
		s.add(n)
	}
	return n, err
}

func (s *fileSource) ReadAt(p []byte, off int64) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.f.ReadAt(p, off)
	if s.add != nil {
		s.add(n)
	}
	return n, err
}

func (s *fileSource) Seek(off int64, whence int) (int64, error) { return s.f.Seek(off, whence) }
func (s *fileSource) Stat() (os.FileInfo, error)                { return s.f.Stat() }

// regular reports whether the input is a regular file of known size.
func (in *input) regular() bool { return in.file != nil && in.size >= 0 }

// outputError says why OUT cannot be created, in the user's terms: no
// temporary file's name, which the user never gave.
func outputError(path string, err error) error {
	var pe *fs.PathError
	switch {
	case errors.Is(err, atomicfile.ErrExists):
		return err
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(path)
		return fmt.Errorf("cannot create %s: the directory %s does not exist", path, dir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot create %s: permission denied in %s", path, filepath.Dir(path))
	case errors.As(err, &pe) && pe.Path != path:
		return fmt.Errorf("cannot create %s: %v", path, pe.Err)
	}
	return err
}
