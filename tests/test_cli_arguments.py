import argparse

import pytest

from actionrec.cli.arguments import class_list, number_list


@pytest.mark.parametrize("text, expected", [
    ("3", [3]), ("1,2,3", [1, 2, 3]), ("11-14", [11, 12, 13, 14]), ("1, 19-20", [1, 19, 20]),
    ("1 4 11-12", [1, 4, 11, 12]), ("5-5", [5]),
])
def test_number_lists_with_ranges(text, expected):
    assert number_list(text) == expected


@pytest.mark.parametrize("text", ["a", "14-11", "1-", "-3", "1,,x", "", " , "])
def test_bad_number_lists_say_what_to_write(text):
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 1,3,11-14"):
        number_list(text)


def test_ranges_reach_the_commands():
    from actionrec.cli import build_parser

    args = build_parser().parse_args(["train", "d.h5", "--train-persons", "11-14", "--validation-persons", "1,19-20"])
    assert args.train_persons == [11, 12, 13, 14] and args.validation_persons == [1, 19, 20]
    assert build_parser().parse_args(["synth", "out", "--persons", "1-3"]).persons == [1, 2, 3]


def test_class_lists_keep_the_given_order_and_refuse_one_or_repeated_names():
    assert class_list("walking,running") == ["walking", "running"]
    assert class_list("running walking, boxing") == ["running", "walking", "boxing"]
    for text, reason in [("walking", "at least two"), ("", "at least two"), ("a,b,a", "twice")]:
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            class_list(text)
    from actionrec.cli import build_parser

    assert build_parser().parse_args(["train", "d.h5", "--classes", "walking,running"]).classes == ["walking", "running"]
