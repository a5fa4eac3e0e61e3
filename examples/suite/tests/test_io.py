import pytest


@pytest.fixture(scope="module")
def resource(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("data") / "resource.txt"
    path.write_text("hello\n")
    return path


@pytest.mark.parametrize("n", range(5))
def test_read(resource, n: int) -> None:  # type: ignore[no-untyped-def]
    assert resource.read_text().strip() == "hello"
