// Package dirctx carries, in a context, the directory a file was found in
// by a walk (an *os.Root and the file's path in it), so that envelope,
// rewriting that file whole, stays inside the walked directory as the walk
// did.
package dirctx

import (
	"context"
	"os"
)

type key struct{}

type dir struct {
	root *os.Root
	rel  string
}

// With returns ctx carrying root and rel, the path in root of the file
// about to be rewrapped.
func With(ctx context.Context, root *os.Root, rel string) context.Context {
	return context.WithValue(ctx, key{}, dir{root, rel})
}

// From returns what With put in ctx.
func From(ctx context.Context) (root *os.Root, rel string, ok bool) {
	d, ok := ctx.Value(key{}).(dir)
	return d.root, d.rel, ok
}
