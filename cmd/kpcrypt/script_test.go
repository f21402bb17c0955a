package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScripts runs testdata/script/*.txtar: the command as a user types it,
// run in-process by testscript so that coverage counts.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "script"),
		Setup: func(e *testscript.Env) error {
			// A trust configuration of the script's own, listing the key
			// file its work directory may hold.
			trust := filepath.Join(e.WorkDir, ".trust.json")
			content := fmt.Sprintf(`{"local_keys": [%q]}`, filepath.Join(e.WorkDir, "kek.json"))
			if err := os.WriteFile(trust, []byte(content), 0o600); err != nil {
				return err
			}
			e.Setenv("KPCRYPT_TRUST_FILE", trust)
			e.Setenv("XDG_CONFIG_HOME", filepath.Join(e.WorkDir, ".config"))
			return nil
		},
	})
}
