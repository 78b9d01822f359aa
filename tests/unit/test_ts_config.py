"""TorchServe config.properties: the parser, the key mapping, and the warnings.

The parser's expected values are what Java 17's ``java.util.Properties.load`` gives for the
same text (TorchServe reads its file with it), except where a test says otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from modelserve import ts_config, ts_env, ts_grpc, ts_unmapped
from modelserve.config import Settings
from modelserve.ts_config import TsConfig, parse_properties, read_ts_config

REPO = Path(__file__).resolve().parents[2]


def read(tmp_path: Path, text: str) -> TsConfig:
    path = tmp_path / "config.properties"
    path.write_text(text)
    return read_ts_config(path)


def warnings_for(config: TsConfig, key: str) -> list[str]:
    return [w for w in config.warnings if w.split(":")[0].split("=")[0] == key]


# -- parser ---------------------------------------------------------------------------------


def test_separators_and_trimming():
    """Java would keep d's trailing blanks ("4   "); modelserve drops them on purpose."""
    text = "a=1\nb: 2\nc 3\n  d  =   4   \ne:5\nf\t6\ng  = 7\nh   :  8\nempty=\nbare\n"
    assert parse_properties(text, env={}) == {
        "a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6", "g": "7", "h": "8",
        "empty": "", "bare": "",
    }


def test_only_the_first_separator_splits():
    props = parse_properties("url=http://h:80/x=y\nk = : v\n", env={})
    assert props == {"url": "http://h:80/x=y", "k": ": v"}


def test_comments_and_blank_lines():
    text = "# comment\n! also a comment\n   # indented comment\n\n   \t\nkey=v # not a comment\n"
    assert parse_properties(text, env={}) == {"key": "v # not a comment"}


def test_continuation_lines():
    text = "a=one \\\n    two \\\n\tthree\nb=x\\\n# part of b, not a comment\nc=\\\n\nd=4\n"
    assert parse_properties(text, env={}) == {
        "a": "one two three", "b": "x# part of b, not a comment", "c": "", "d": "4",
    }


def test_backslash_space_is_an_escaped_space_not_a_continuation():
    # Java gives "one   ": the escaped space stays, the unescaped blanks after it are trimmed
    assert parse_properties("a=one\\   \nb=two\n", env={}) == {"a": "one ", "b": "two"}


def test_even_backslashes_do_not_continue():
    assert parse_properties("path=C:\\\\dir\\\\\nnext=1\n", env={}) == {
        "path": "C:\\dir\\", "next": "1",
    }


def test_escapes():
    text = "key\\=with\\:seps=v\ntab=a\\tb\nuni=caf\\u00e9\nspace=x\\ \nother=\\q\n"
    assert parse_properties(text, env={}) == {
        "key=with:seps": "v", "tab": "a\tb", "uni": "café", "space": "x ", "other": "q",
    }


@pytest.mark.parametrize("text, line", [
    ("a=secret\\u12\n", 1),
    ("# c\nb=1\\\n  2\r\n\na=pass\\uword\n", 5),  # the line of the bad entry
    ("a=\\u", 1),
])
def test_malformed_unicode_escape(text, line):
    """Java refuses the file ("Malformed \\uxxxx encoding"); the error names the line and
    echoes nothing of the value, which may be a secret."""
    with pytest.raises(ValueError, match=rf"^line {line}: malformed .uXXXX escape$") as caught:
        parse_properties(text, env={})
    assert not re.search("secret|word", str(caught.value))


def test_crlf_and_repeated_keys():
    assert parse_properties("a=1\r\nb=2\r\na=3\r\n", env={}) == {"a": "3", "b": "2"}


# Each expected value is what Java 17's Properties.load printed for the same text.
JAVA_CASES = {
    "unicode escapes in keys": (
        "caf\\u00e9=1\nup=\\u00E9\nsep\\u003dkey=c\n",
        {"café": "1", "up": "é", "sep=key": "c"}),
    "surrogate pair": ("emoji=\\ud83d\\ude00\n", {"emoji": "\U0001f600"}),
    "lone surrogate": ("a=\\ud83d\nb=x\n", {"a": "\ud83d", "b": "x"}),
    "escaped space, backslash and separator in keys": (
        "my\\ key=v\nk\\\\=v2\nk3\\\\\\=x=v3\na\\ \\ b c\n",
        {"my key": "v", "k\\": "v2", "k3\\=x": "v3", "a  b": "c"}),
    "control escapes; any other is the character": (
        "a=\\n\\r\\f\\t|\\b\\\"\\'\\U0041\na\\nb=c\n",
        {"a": "\n\r\f\t|b\"'U0041", "a\nb": "c"}),
    "an escaped backslash before u": ("a=\\\\u0041\n", {"a": "\\u0041"}),
    "escaped spaces by \\u0020 survive trimming": (
        "a=\\u0020x\nb=x\\u0020\n", {"a": " x", "b": "x "}),
    "backslash at the end of the file": ("a=x\\", {"a": "x"}),
    "three backslashes at the end of the file": ("a=b\\\\\\", {"a": "b\\"}),
    "continued onto a blank last line": ("a=\\\n   ", {"a": ""}),
    "CR line ends": ("a=1\rb=2\r", {"a": "1", "b": "2"}),
    "mixed line ends": ("a=1\r\r\nb=2\n\rc=3", {"a": "1", "b": "2", "c": "3"}),
    "CRLF continuation": ("a=1\\\r\n  2\r\nb=3\r\n", {"a": "12", "b": "3"}),
    "continuation onto an empty line ends the value": (
        "a=1\\\r\n\r\nb=2\r\n", {"a": "1", "b": "2"}),
    "form feed is whitespace": (
        "a\f1\nb\f=\f2\n\f\fc=3\n\f# comment\nd=1\\\n\f\f2\n",
        {"a": "1", "b": "2", "c": "3", "d": "12"}),
    "other blanks are not": ("a\x0b1\n\x0bb=2\nc\xa03\n",
                             {"a\x0b1": "", "\x0bb": "2", "c\xa03": ""}),
    "only CR and LF end lines": ("a=1\x85b\x1cc\u2028d\n", {"a": "1\x85b\x1cc\u2028d"}),
    "a comment does not continue": ("# comment \\\na=1\n", {"a": "1"}),
    "# and ! inside a key": ("a#b=c\na!b=d\n\\#x=1\n", {"a#b": "c", "a!b": "d", "#x": "1"}),
    "empty keys": ("=value\n:v2\n", {"": "v2"}),
    "a key continued": ("a\\\n b=c\n", {"ab": "c"}),
    "a lone backslash line": ("\\\na=1\n", {"a": "1"}),
    "only the first separator counts": (
        "a==b\na2::b\na3 : = b\na4 \t = \t b\n",
        {"a": "=b", "a2": ":b", "a3": "= b", "a4": "b"}),
}


@pytest.mark.parametrize("text, expected", JAVA_CASES.values(), ids=JAVA_CASES)
def test_what_java_reads(text, expected):
    assert parse_properties(text, env={}) == expected


def test_environment_expansion(monkeypatch):
    monkeypatch.setenv("TS_TEST_PORT", "9080")
    monkeypatch.setenv("TS_TEST_STORE", "/srv/models")
    props = parse_properties(
        "inference_address=http://0.0.0.0:${TS_TEST_PORT}\n"
        "model_store=$$TS_TEST_STORE$$/v1\nplain=$HOME and $ alone\n"
    )
    assert props["inference_address"] == "http://0.0.0.0:9080"
    assert props["model_store"] == "/srv/models/v1"
    assert props["plain"] == "$HOME and $ alone"  # only ${VAR} and $$VAR$$ are references


def test_environment_expansion_uses_the_given_mapping():
    assert parse_properties("a=${X}-${X}\n", env={"X": "y"}) == {"a": "y-y"}


def test_unset_environment_variable_is_an_error():
    with pytest.raises(ValueError, match="model_store: environment variable NOPE_UNSET"):
        parse_properties("model_store=${NOPE_UNSET}\n", env={})


# -- addresses ------------------------------------------------------------------------------


def test_addresses_map_to_host_and_ports(tmp_path):
    config = read(tmp_path, "inference_address=http://0.0.0.0:9080\n"
                            "management_address=http://0.0.0.0:9081\n"
                            "metrics_address=http://0.0.0.0:9082\n")
    assert config.settings == {"host": "0.0.0.0", "inference_port": 9080,
                               "management_port": 9081, "metrics_port": 9082}
    assert config.warnings == []


def test_address_without_port_gets_torchserves_default(tmp_path):
    config = read(tmp_path, "inference_address=http://127.0.0.1\n"
                            "management_address=https://127.0.0.1\n")
    assert config.settings["inference_port"] == 80
    assert config.settings["management_port"] == 8444


def test_https_addresses_choose_the_tls_listeners(tmp_path):
    """Connector.isSsl: an https address is a TLS listener; ModelServer: enable_grpc_ssl turns
    TLS on for the gRPC servers (config_https.properties in TorchServe's tests)."""
    config = read(tmp_path, "inference_address=https://0.0.0.0:8443\n"
                            "management_address=https://0.0.0.0:8444\n"
                            "metrics_address=http://0.0.0.0:8445\n"
                            "private_key_file=key.pem\ncertificate_file=certs.pem\n"
                            "enable_grpc_ssl=true\n")
    assert config.warnings == []
    settings = Settings(**config.settings)
    assert settings.tls_listeners == ["inference", "management", "grpc"]
    assert (settings.tls_cert_file, settings.tls_key_file) == (Path("certs.pem"), Path("key.pem"))
    assert [settings.uses_tls(name) for name in ("inference", "metrics", "grpc")] == [
        True, False, True]


def test_grpc_keys_place_torchserves_grpc_apis(tmp_path):
    """ConfigManager.getGRPCPort / getGRPCAddress: grpc_inference_port, grpc_management_port
    (Integer.parseInt) and the two addresses (an IP address, not a URL) set where TorchServe's
    gRPC APIs listen; both bind the inference address's host."""
    config = read(tmp_path, "grpc_inference_port=17070\ngrpc_management_port=17071\n"
                            "grpc_inference_address=0.0.0.0\ngrpc_management_address=0.0.0.0\n")
    assert config.warnings == []
    settings = Settings(**config.settings)
    assert (settings.grpc_torchserve_inference_port, settings.grpc_torchserve_management_port,
            settings.grpc_torchserve_host) == (17070, 17071, "0.0.0.0")
    assert read(tmp_path, "grpc_inference_address=[::1]\n").settings == {
        "grpc_torchserve_host": "::1"}


def test_grpc_management_address_follows_the_inference_one(tmp_path):
    config = read(tmp_path, "grpc_inference_address=127.0.0.1\n"
                            "grpc_management_address=0.0.0.0\n")
    assert config.settings == {"grpc_torchserve_host": "127.0.0.1"}
    [warning] = config.warnings
    assert warning.startswith("grpc_management_address: binds 0.0.0.0, but modelserve binds "
                              "both TorchServe gRPC APIs to one host; it follows "
                              "grpc_inference_address (127.0.0.1)")
    alone = read(tmp_path, "grpc_management_address=0.0.0.0\n")
    assert alone.settings == {} and "grpc_inference_address is unset" in alone.warnings[0]
    assert read(tmp_path, "grpc_management_address=127.0.0.1\n").warnings == []


@pytest.mark.parametrize("line, message", [
    ("grpc_inference_port=seven", "grpc_inference_port: expected a port number"),
    ("grpc_management_port=70000", "grpc_management_port: port 70000 is out of range"),
    ("grpc_inference_address=http://0.0.0.0:7070", "grpc_inference_address: expected an IP "
     "address or host name"),
])
def test_grpc_values_that_cannot_be_honoured(tmp_path, line, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        read(tmp_path, line + "\n")


def test_grpc_port_zero_turns_the_api_off_with_a_word(tmp_path):
    config = read(tmp_path, "grpc_management_port=0\n")
    assert config.settings == {"grpc_torchserve_management_port": 0}
    [warning] = config.warnings
    assert warning.startswith("grpc_management_port=0: TorchServe would listen on a port")


def test_tls_files_with_http_addresses_serve_no_tls(tmp_path):
    """ConfigManager.getSslContext is only asked for by an https connector."""
    config = read(tmp_path, "certificate_file=c.pem\nprivate_key_file=k.pem\n")
    assert config.settings["tls_listeners"] == []
    assert not Settings(**config.settings).uses_tls("inference")
    plain = read(tmp_path, "inference_address=http://127.0.0.1:8080\n")
    assert "tls_listeners" not in plain.settings


def test_keystore_keys(tmp_path):
    """keystore, keystore_pass, keystore_type (PKCS12 in any case; JKS refused, and the
    password is never echoed)."""
    config = read(tmp_path, "inference_address=https://127.0.0.1:8443\nkeystore=ks.p12\n"
                            "keystore_pass=hunter2 \nkeystore_type=pkcs12\n")
    settings = Settings(**config.settings)
    assert settings.tls_keystore == Path("ks.p12") and settings.tls_keystore_type == "PKCS12"
    assert settings.tls_keystore_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    with pytest.raises(ValueError, match="keystore_type=JKS: only PKCS12") as error:
        read(tmp_path, "keystore=ks.jks\nkeystore_pass=hunter2\nkeystore_type=JKS\n")
    assert "hunter2" not in str(error.value)


def test_cors_keys_are_sent_as_written(tmp_path):
    config = read(tmp_path, "cors_allowed_origin=*\ncors_allowed_methods=GET, POST, OPTIONS\n"
                            "cors_allowed_headers=\n")
    settings = Settings(**config.settings)
    assert (settings.cors_allowed_origin, settings.cors_allowed_methods,
            settings.cors_allowed_headers) == ("*", "GET, POST, OPTIONS", None)


def test_different_hosts_use_the_inference_one(tmp_path):
    config = read(tmp_path, "inference_address=http://10.0.0.5:8080\n"
                            "management_address=http://127.0.0.1:8081\n"
                            "metrics_address=http://10.0.0.5:8082\n")
    assert config.settings["host"] == "10.0.0.5"
    [warning] = config.warnings
    assert warning.startswith("management_address: binds 127.0.0.1")
    assert "10.0.0.5" in warning


def test_without_inference_address_the_host_is_left_to_settings(tmp_path):
    config = read(tmp_path, "management_address=http://0.0.0.0:9081\n")
    assert config.settings == {"management_port": 9081}
    [warning] = config.warnings
    assert warning.startswith("management_address: binds 0.0.0.0")


def test_ipv6_address(tmp_path):
    config = read(tmp_path, "inference_address=http://[::1]:8080\n")
    assert config.settings == {"host": "::1", "inference_port": 8080}


@pytest.mark.parametrize("value, message", [
    ("unix:/tmp/ts.sock", "Unix domain sockets"),
    ("0.0.0.0:8080", "expected http://HOST:PORT"),
    ("http://0.0.0.0:99999", "port 99999 is out of range"),
])
def test_bad_addresses(tmp_path, value, message):
    with pytest.raises(ValueError, match=f"inference_address: {message}"):
        read(tmp_path, f"inference_address={value}\n")


def test_shared_port_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="share port 8080"):
        read(tmp_path, "inference_address=http://127.0.0.1:8080\n"
                       "management_address=http://127.0.0.1:8080\n")


# -- mapped keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("model_store=/srv/model-store", {"model_store": "/srv/model-store"}),
    ("workflow_store=/srv/wf-store", {"workflow_store": "/srv/wf-store"}),
    ("job_queue_size=250", {"job_queue_size": 250}),
    ("max_request_size=104857600", {"max_request_size": 104857600}),
    ("max_response_size=2000000", {"max_response_size": 2000000}),
    ("default_workers_per_model=3", {"default_workers_per_model": 3}),
    ("default_response_timeout=300", {"response_timeout": 300.0}),
    ("default_startup_timeout=600", {"startup_timeout": 600.0}),
    ("install_py_dep_per_model=true", {"install_py_dep_per_model": True}),
    ("install_py_dep_per_model=FALSE", {"install_py_dep_per_model": False}),
    ("allowed_urls=https://s3.amazonaws.com/.*, https://torchserve.pytorch.org/.*",
     {"allowed_urls": ["https://s3.amazonaws.com/.*", "https://torchserve.pytorch.org/.*"]}),
])
def test_mapped_key(tmp_path, line, expected):
    config = read(tmp_path, line + "\n")
    assert config.settings == expected
    assert config.warnings == []


@pytest.mark.parametrize("value, expected", [
    ("all", ["all"]),
    ("ALL", ["all"]),
    ("a.mar,b.mar", ["a.mar", "b.mar"]),
    ("noop=noop.mar, vgg16=vgg16.mar", ["noop=noop.mar", "vgg16=vgg16.mar"]),
    ("standalone", []),
    ("", []),
])
def test_load_models(tmp_path, value, expected):
    assert read(tmp_path, f"load_models={value}\n").settings == {"load_models": expected}


def test_zero_workers_means_the_cpu_count(tmp_path):
    config = read(tmp_path, "default_workers_per_model=0\n")
    assert config.settings == {"default_workers_per_model": len(os.sched_getaffinity(0))}
    [warning] = config.warnings
    assert warning.startswith("default_workers_per_model: 0 means")


def test_non_boolean_reads_as_false_with_a_warning(tmp_path):
    config = read(tmp_path, "install_py_dep_per_model=yes\n")
    assert config.settings == {"install_py_dep_per_model": False}
    assert warnings_for(config, "install_py_dep_per_model")


@pytest.mark.parametrize("line, message", [
    ("job_queue_size=lots", "job_queue_size: expected an integer"),
    ("default_response_timeout=soon", "default_response_timeout: expected a number"),
    ("allowed_urls=https://ok/.*,(unclosed", "allowed_urls: '\\(unclosed' is not a valid"),
])
def test_bad_values_are_errors(tmp_path, line, message):
    with pytest.raises(ValueError, match=message):
        read(tmp_path, line + "\n")


def test_models_json_spanning_lines(tmp_path):
    config = read(tmp_path, 'models={\\\n  "noop": {\\\n    "1.0": {\\\n'
                            '      "minWorkers": 2,\\\n      "batchSize": 4\\\n    }\\\n'
                            '  }\\\n}\n')
    assert config.settings == {"models": {"noop": {"1.0": {"minWorkers": 2, "batchSize": 4}}}}
    assert config.warnings == []


def test_invalid_models_json(tmp_path):
    with pytest.raises(ValueError, match="models: invalid JSON"):
        read(tmp_path, 'models={"noop": {"1.0": {"batchSize": 4,}}}\n')


@pytest.mark.parametrize("value", ['["noop"]', '{"noop": 1}', '{"noop": {"1.0": 4}}'])
def test_models_of_the_wrong_shape(tmp_path, value):
    with pytest.raises(ValueError, match="models: .*name: {version"):
        read(tmp_path, f"models={value}\n")


def test_unknown_per_model_key_warns(tmp_path):
    config = read(tmp_path, 'models={"noop": {"1.0": {"batchsize": 4, "jobQueueSize": 9}}}\n')
    [warning] = config.warnings
    assert warning.startswith("models: noop 1.0: unknown per-model key 'batchsize'")


# -- keys with no setting here --------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(ts_unmapped.IGNORED))
def test_every_ignored_key_warns_once_naming_it(tmp_path, key):
    config = read(tmp_path, f"{key}=x\n")
    assert config.settings == {}
    [warning] = config.warnings
    assert warning.startswith(f"{key}:") or warning.startswith(f"{key}=x:")
    assert "unknown" not in warning


@pytest.mark.parametrize("line, verdict", [
    ("number_of_netty_threads=8", "ignored"),
    ("netty_client_threads=4", "ignored"),
    ("async_logging=true", "ignored"),
    ("vmargs=-Xmx4g", "ignored"),
    ("unregister_model_timeout=120", "ignored"),
    ("enable_metrics_api=true", "ignored"),
    ("enable_metrics_api=false", "not supported"),
    ("decode_input_request=true", "ignored"),
    ("decode_input_request=false", "not supported"),
    ("number_of_gpu=1", "not supported"),
    ("grpc_inference_max_connection_age_ms=60000", "not supported"),
    ("grpc_some_future_key=1", "not supported"),
    ("blacklist_env_vars=", "ignored"),
    ("blacklist_env_vars=AWS_.*", "not supported"),
])
def test_ignored_key_verdicts(tmp_path, line, verdict):
    key = line.split("=")[0]
    [warning] = read(tmp_path, line + "\n").warnings
    assert re.match(rf"{key}(=[^:]*)?: {verdict}, ", warning), warning


def test_value_dependent_warnings_show_the_value(tmp_path):
    [warning] = read(tmp_path, "decode_input_request=false\n").warnings
    assert warning.startswith("decode_input_request=false: not supported")


def test_secrets_are_not_echoed(tmp_path):
    config = read(tmp_path, "keystore_pass=hunter2\nkeystore_typo=hunter2\n")
    assert config.warnings and not any("hunter2" in w for w in config.warnings)


def test_unknown_keys(tmp_path):
    config = read(tmp_path, "inference_adress=http://0.0.0.0:8080\nbatch_size=8\n")
    assert config.settings == {}
    assert config.warnings == [
        "inference_adress: unknown TorchServe key, ignored",
        "batch_size: unknown TorchServe key, ignored (a modelserve setting: put it in "
        "config.yaml or MODELSERVE_BATCH_SIZE)",
    ]


# -- the whole file -------------------------------------------------------------------------


def test_only_present_keys_become_settings(tmp_path):
    assert read(tmp_path, "# nothing\n").settings == {}
    assert read(tmp_path, "model_store=ms\n").settings == {"model_store": "ms"}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ts_config(tmp_path / "nope.properties")


def test_latin1_file(tmp_path):
    path = tmp_path / "config.properties"
    path.write_bytes("model_store=/srv/modèles\n".encode("latin-1"))
    assert read_ts_config(path).settings == {"model_store": "/srv/modèles"}


REALISTIC = """\
# TorchServe config.properties, as in TorchServe's docs and examples
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
number_of_netty_threads=32
netty_client_threads=4
job_queue_size=1000
model_store=$$TS_TEST_MODEL_STORE$$
load_models=noop.mar,vgg16=vgg16.mar
default_workers_per_model=2
default_response_timeout=180
default_startup_timeout=300
max_request_size=65535000
max_response_size=65535000
install_py_dep_per_model=true
allowed_urls=https://s3.amazonaws.com/.*,https://torchserve.pytorch.org/.*
enable_metrics_api=true
metrics_mode=prometheus
disable_token_authorization=true
enable_model_api=true
async_logging=true
vmargs=-Xmx2g -XX:+ExitOnOutOfMemoryError
models={\\
  "noop": {\\
    "1.0": {\\
        "defaultVersion": true,\\
        "marName": "noop.mar",\\
        "minWorkers": 1,\\
        "maxWorkers": 1,\\
        "batchSize": 4,\\
        "maxBatchDelay": 100,\\
        "responseTimeout": 120\\
    }\\
  },\\
  "vgg16": {\\
    "1.0": {\\
        "defaultVersion": true,\\
        "marName": "vgg16.mar",\\
        "minWorkers": 1,\\
        "maxWorkers": 4,\\
        "batchSize": 8,\\
        "maxBatchDelay": 100,\\
        "responseTimeout": 120\\
    }\\
  }\\
}
"""


def test_realistic_config_validates(tmp_path, monkeypatch):
    monkeypatch.setenv("TS_TEST_MODEL_STORE", str(tmp_path / "store"))
    config = read(tmp_path, REALISTIC)
    settings = Settings(**config.settings)
    assert (settings.host, settings.inference_port, settings.management_port,
            settings.metrics_port) == ("0.0.0.0", 8080, 8081, 8082)
    assert settings.model_store == tmp_path / "store"
    assert settings.load_models == ["noop.mar", "vgg16=vgg16.mar"]
    assert settings.default_workers_per_model == 2
    assert (settings.response_timeout, settings.startup_timeout) == (180.0, 300.0)
    assert (settings.max_request_size, settings.max_response_size) == (65535000, 65535000)
    assert settings.job_queue_size == 1000
    assert settings.install_py_dep_per_model is True
    assert settings.allowed_urls == ["https://s3.amazonaws.com/.*",
                                     "https://torchserve.pytorch.org/.*"]
    assert settings.disable_token_auth is True and settings.enable_model_api is True
    assert settings.models["vgg16"]["1.0"] == {
        "defaultVersion": True, "marName": "vgg16.mar", "minWorkers": 1, "maxWorkers": 4,
        "batchSize": 8, "maxBatchDelay": 100, "responseTimeout": 120,
    }
    assert (settings.grpc_torchserve_inference_port,
            settings.grpc_torchserve_management_port) == (7070, 7071)
    ignored = {"number_of_netty_threads", "netty_client_threads", "enable_metrics_api",
               "async_logging", "vmargs"}
    assert {w.split(":")[0].split("=")[0] for w in config.warnings} == ignored
    assert len(config.warnings) == len(ignored)


def test_docs_list_every_known_key():
    """docs/torchserve-config.md has a row for every key the code maps or ignores."""
    doc = (REPO / "docs" / "torchserve-config.md").read_text()
    rows = set(re.findall(r"^\| `([A-Za-z_]+)(?:=[^`]*)?` \|", doc, flags=re.MULTILINE))
    known = (set(ts_config._MAPPED) | set(ts_config._PORT_FIELDS) | set(ts_unmapped.IGNORED)
             | ts_env.SWITCHES | ts_config._TLS_SWITCHES | set(ts_grpc.GRPC_FIELDS))
    assert known - rows == set()
    assert rows - known == set()


def test_ts_environment_variables_override_the_file_when_enabled(tmp_path, monkeypatch):
    """ConfigManager.setSystemVars: with enable_envvars_config=true, TS_<KEY> beats the file's
    key; TS_ALLOWED_URLS only with use_env_allowed_urls=true; off, the variables are unread."""
    monkeypatch.setenv("TS_ENABLE_MODEL_API", "true")
    monkeypatch.setenv("TS_DEFAULT_WORKERS_PER_MODEL", "3")
    monkeypatch.setenv("TS_ALLOWED_URLS", "http://evil.*")
    monkeypatch.setenv("TS_NOT_A_KEY", "x")
    text = "enable_model_api=false\ndefault_workers_per_model=1\n"
    off = read(tmp_path, text)
    assert (off.settings["enable_model_api"], off.settings["default_workers_per_model"]) == (
        False, 1)
    on = read(tmp_path, "enable_envvars_config=true\n" + text)
    assert (on.settings["enable_model_api"], on.settings["default_workers_per_model"]) == (
        True, 3)
    assert "allowed_urls" not in on.settings and on.warnings == []
    urls = read(tmp_path, "enable_envvars_config=true\nuse_env_allowed_urls=true\n")
    assert urls.settings["allowed_urls"] == ["http://evil.*"]
