"""What `emif` exits with: the one place these numbers are defined (README.md#commands).

launchd restarts the daemon only after a non-zero exit (`KeepAlive {SuccessfulExit: false}`),
so OK means "asked to stop, or all done", and never "gave up".
"""

OK = 0  # all done (`--once`), or stopped on request
FAILED = 1  # items failed or a stage is off (`--once`); a file or check has problems
USAGE = 2  # the config, the arguments or the root are wrong: nothing was done
SERVER_DOWN = 3  # `--once` gave up on a server that did not answer for `server.once_wait_s`
