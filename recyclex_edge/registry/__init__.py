"""The model registry: signed packages, the versions kept on the bin, the audit log, shadow runs and the
watch that rolls a bad model back.

The daemon asks it for "the active classifier"; the classifier knows nothing of it. Modules:

| module | what |
|---|---|
| `keys.py` | Ed25519 key pairs and the one-line public key text `model.trusted_keys` lists |
| `package.py` | the one-file package (card + .tflite + signature): pack and verify |
| `store.py` | the versions under `<state_dir>/models`, the atomic active pointer, the writer lock |
| `audit.py` | who did what to which model, appended under `<state_dir>/models` |
| `sealing.py` | optional AES-GCM encryption of installed models at rest |
| `service.py` | what the daemon uses: install, activate, rollback, shadow, the watch |
| `tally.py` | what is counted per model (uncertain rates, the watch, the shadow) and the verdicts drawn |
| `download.py` | fetching a package for `install-model`: size limit, timeout, TLS verified, sha256 |
| `commands.py` | the model commands MQTT and the page run (install-model, activate-model, ...) |
| `commandline.py` | `recyclex-edge model ...` |

Submodules are imported explicitly (the config imports `keys`), so this file imports nothing.
"""
