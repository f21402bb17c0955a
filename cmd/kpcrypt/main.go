// Command kpcrypt encrypts and decrypts files and streams under keys held in
// IBM Key Protect, Hyper Protect Crypto Services, an HSM, or a local key file.
//
// Usage:
//
//	kpcrypt encrypt --kek URI [--kek URI]... [-o OUT] [IN]
//	kpcrypt decrypt [--kek URI]... [-o OUT] [IN]
//	kpcrypt inspect [--json] [--current] FILE
//	kpcrypt rewrap [--kek URI]... [--to-kek URI]... [--add-kek URI]... [--remove-kek URI]... [--dry-run] PATH...
//	kpcrypt scan (--below-version VERSION | --outdated) [--kek URI]... PATH...
//	kpcrypt keygen -o PATH
//	kpcrypt keygen --rotate PATH
//	kpcrypt keygen --pkcs11 URI
//	kpcrypt keygen --rotate-pkcs11 URI
//	kpcrypt key COMMAND ...   (Key Protect and HPCS keys: create, import, list, show, rotate, ...)
//
// IN and OUT default to standard input and output; "-" means the same.
// Outputs are written atomically: nothing is left at OUT after a failure.
// An encrypt output gets mode 0666 less the umask, like cp's and age's (the
// ciphertext is safe to share as the umask allows); a decrypt output gets
// 0600 less the umask, since it holds plaintext.
// Secrets come from key files and the environment, never from flags.
//
// Exit status: 0 on success, 1 on failure, 2 on a usage error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kpcrypt/kpcrypt/kms/pkcs11"
)

// exitStatus ends a command with a status of its own; whatever had to be
// said was printed already.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError is a mistake in the command line; it exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// hint is the help command for the command the message is about: "kpcrypt
// CMD -h" when it starts with a command's name, "kpcrypt -h" otherwise.
func (e *usageError) hint() string {
	name, _, _ := strings.Cut(e.msg, ":")
	if name == "key" || strings.HasPrefix(name, "key ") {
		return "kpcrypt key -h"
	}
	if findCommand(name) != nil {
		return "kpcrypt " + name + " -h"
	}
	return "kpcrypt -h"
}

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const usage = `kpcrypt encrypts files under keys held in a KMS, an HSM or a local key file.

Usage:
  kpcrypt encrypt --kek URI [--kek URI]... [-o OUT] [--force] [IN]
  kpcrypt decrypt [--kek URI]... [-o OUT] [--force] [IN]
  kpcrypt inspect [--json] [--current] FILE
  kpcrypt rewrap [--kek URI]... [--to-kek URI]... [--add-kek URI]... [--remove-kek URI]... [--dry-run] PATH...
  kpcrypt scan (--below-version VERSION | --outdated) [--kek URI]... PATH...
  kpcrypt keygen -o PATH
  kpcrypt keygen --rotate PATH
  kpcrypt keygen --pkcs11 URI
  kpcrypt keygen --rotate-pkcs11 URI
  kpcrypt key COMMAND ...      Key Protect and HPCS keys: create, import, list,
                               show, versions, rotate, enable, disable, delete,
                               restore, policy ("kpcrypt key -h")

IN and OUT default to standard input and output; "-" means the same.
Run "kpcrypt COMMAND -h" for the options of a command.

KEK URIs:
  local:PATH    a local key file made by "kpcrypt keygen" (for development)
  crn:v1:bluemix:public:kms:REGION:a/ACCOUNT:INSTANCE:key:KEYID
                an IBM Key Protect root key ("hs-crypto" in place of "kms" for HPCS)
  pkcs11:token=TOKEN;object=LABEL?module-path=/path/module.so&pin-source=FILE
                AES keys labelled LABEL in a PKCS#11 token (RFC 7512; also id=,
                serial=, slot-id=). Files record only pkcs11:token=TOKEN;object=LABEL.

Trust: without --kek, decrypt, rewrap, scan and inspect --current open the
KEKs a file names only as the trust configuration allows (KPCRYPT_TRUST_FILE,
else ~/.config/kpcrypt/trust.json; see README "Trust and threat model"):
Key Protect CRNs that pass strict checks (and, if it lists instances, only
those), and the local key files and PKCS#11 tokens it lists. With --kek they
open nothing else. --kms-timeout (KPCRYPT_KMS_TIMEOUT, 30s) bounds the KMS
work for one file.

Environment for Key Protect and HPCS:
  IBMCLOUD_API_KEY        API key exchanged at IAM for tokens (required)
  IBMCLOUD_KP_ENDPOINT    API base URL, if not the region's public endpoint
                          (HPCS port-based endpoints, private endpoints, kplocal);
                          every CRN's calls go there, unless the trust
                          configuration routes its instance
  IBMCLOUD_IAM_ENDPOINT   IAM base URL (tokens from its /identity/token)

Environment for PKCS#11 tokens:
  KPCRYPT_PKCS11_MODULE   module path when the URI has no module-path (else
                          well-known SoftHSM2 paths are searched)
  KPCRYPT_PKCS11_PIN      user PIN when the URI has no pin-source (pin-value
                          is refused on the command line)
`

func main() { os.Exit(mainCode()) }

// mainCode runs the command line of the process and returns its exit
// status. The tests run it as the kpcrypt command (testscript).
func mainCode() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	finished := make(chan struct{})
	go func() {
		// An interrupt cancels ctx, and the command stops between reads
		// and writes, abandoning its output. A read that never returns (a
		// terminal, a silent pipe) cannot see it: after a grace period the
		// process ends with the interrupt's status anyway. Outputs are
		// never half-committed: an unnamed temporary file vanishes, a named
		// one is removed by the next run.
		select {
		case <-ctx.Done():
		case <-finished:
			return
		}
		t := time.NewTimer(interruptGrace)
		defer t.Stop()
		select {
		case <-t.C:
			fmt.Fprint(os.Stderr, "\rkpcrypt: interrupted\n")
			os.Exit(130)
		case <-finished:
		}
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	close(finished)
	stop()
	return code
}

// interruptGrace is how long an interrupted command may take to stop.
const interruptGrace = 2 * time.Second

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ui := &ui{stdin: stdin, stdout: stdout, stderr: stderr}
	// The PKCS#11 module and PIN defaults come from KPCRYPT_PKCS11_MODULE
	// and KPCRYPT_PKCS11_PIN.
	ui.p11 = &pkcs11.Provider{Config: pkcs11.ConfigFromEnv(os.Getenv)}
	defer ui.p11.Close()
	ui.loadTrust(os.Getenv)
	ui.resolver = ui.newResolver()
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	err := dispatch(ctx, ui, args)
	var ue *usageError
	var es exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &es):
		return int(es)
	case errors.Is(err, errHelp):
		return 0
	case errors.Is(err, errQuiet):
		return 1
	case errors.As(err, &ue):
		ui.errorf("%v", err)
		ui.infof("run %q for usage", ue.hint())
		return 2
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		// Ctrl-C or SIGTERM: the conventional 128+SIGINT, on a clean line
		// (the terminal has echoed ^C where the cursor was).
		if isTerminal(stderr) {
			fmt.Fprint(stderr, "\r")
		}
		ui.errorf("interrupted")
		return 130
	default:
		ui.errorf("%v", err)
		return 1
	}
}
