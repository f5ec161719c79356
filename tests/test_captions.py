"""Caption files in the three formats people have: read, split, tokenised and encoded as cs231n's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caption_torch.data import captions as cf


def test_coco_format_keeps_its_split_and_folder(tmp_path):
    path = tmp_path / "captions_val2014.json"
    data = {
        "images": [{"id": 9, "file_name": "COCO_val2014_000000000009.jpg"}, {"id": 4, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 4, "caption": "A dog."}, {"image_id": 9, "caption": "Two cats, sleeping!"},
                        {"image_id": 9, "caption": "cats on a bed"}],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    images = cf.read_caption_file(path)
    assert [image.candidates for image in images] == [
        ("COCO_val2014_000000000009.jpg", "val2014/COCO_val2014_000000000009.jpg"),
        ("b.jpg",),
    ]
    assert [image.captions for image in images] == [["Two cats, sleeping!", "cats on a bed"], ["A dog."]]
    assert {image.split for image in images} == {"val"}


def test_karpathy_format_maps_restval_to_train(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    entries = [
        {"filename": "a.jpg", "split": "restval", "sentences": [{"raw": "A man."}]},
        {"filename": "b.jpg", "filepath": "val2014", "split": "test", "sentences": [{"tokens": ["a", "cat"]}]},
        {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "x y"}, {"raw": "z"}]},
    ]
    path.write_text(json.dumps({"dataset": "flickr8k", "images": entries}))
    images = cf.read_caption_file(path)
    assert [image.split for image in images] == ["train", "test", "val"]
    assert images[1].candidates == ("val2014/b.jpg", "b.jpg")
    assert images[1].captions == ["a cat"]


def test_csv_format_groups_captions_by_image_and_splits_by_seed(tmp_path):
    path = tmp_path / "captions.txt"
    lines = ["image,caption"] + [f"{i}.jpg,A picture number {i}, with a comma ." for i in range(10)]
    lines += ['0.jpg,"A quoted, second caption"']
    path.write_text("\n".join(lines) + "\n")
    images = cf.read_caption_file(path)
    assert len(images) == 10
    assert images[0].captions == ["A picture number 0, with a comma .", "A quoted, second caption"]
    cf.assign_splits(images, seed=0)
    splits = [image.split for image in images]
    assert splits.count("val") == 1 and splits.count("test") == 1 and splits.count("train") == 8
    again = cf.read_caption_file(path)
    cf.assign_splits(again, seed=0)
    assert [image.split for image in again] == splits


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("captions.txt", "image,caption\na.jpg,A dog\nb.jpg\n",
         "captions.txt: line 3: expected image,caption, found ['b.jpg']"),
        ("captions.txt", "file,text\na.jpg,A dog\n",
         "line 1: expected the header image,caption, found ['file', 'text']"),
        ("captions.txt", "image,caption,source\na.jpg,A dog,flickr\n",
         "line 1: expected the header image,caption, found ['image', 'caption', 'source']"),
        ("captions.txt", 'image,caption\na.jpg,A dog\nb.jpg,"A cat on\na mat\n',
         "captions.txt: line 3: expected valid CSV, found unexpected end of data"),
        ("captions.txt", "image,caption\na.jpg,...\n",
         "line 2: expected a caption with at least one word, found '...'"),
        ("d.json", '{"images": [{"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "a"}]}]}',
         "images[0].split: expected one of ['restval', 'test', 'train', 'val'], found the string 'dev'"),
        ("d.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "a"}]}',
         "annotations[0].image_id: expected the id of an entry of images, found the number 2"),
        ("d.json", '{"images": [', "d.json: expected valid JSON"),
        ("d.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": 7}]}',
         "annotations[0].caption: expected a caption with at least one word, found the number 7"),
        ("d.json", '{"images": [{"filename": "a.jpg", "split": "val", "sentences": [{"raw": NaN}]}]}',
         "images[0].sentences[0].raw: expected a caption with at least one word, found the number nan"),
        ("d.json", '{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []}',
         "images[1].id: expected an id no other entry of images has, found the number 1, the id of images[0] too"),
        ("d.json", '{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}',
         "images[0].id: expected an integer or string id, found a list of 1"),
        ("captions.txt", b"image,caption\na.jpg,A \xff dog\n", "captions.txt: expected UTF-8 text"),
        ("d.json", '{"images": [{"filename": "a\\ud800.jpg", "split": "val", "sentences": [{"raw": "a"}]}]}',
         "images[0].filename: expected a file name, found the string 'a.ud800.jpg', holding a lone surrogate"),
        ("d.json", '{"images": [{"filename": "a.jpg", "split": "val", "sentences": [{"tokens": ["\\udc80"]}]}]}',
         "images[0].sentences[0].tokens[0]: expected a string, found the string '.udc80', holding a lone surrogate"),
    ],
)  # fmt: skip
def test_bad_files_name_the_line_or_entry(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(cf.CaptionFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cf.read_caption_file(path)


def test_tokenise_vocabulary_and_encoding_as_cs231n():
    assert cf.tokenize("A Dog's ball, on the GRASS.") == ["a", "dogs", "ball", "on", "the", "grass"]
    train = [["a", "dog"], ["a", "cat"], ["a", "dog", "runs"]]
    idx_to_word = cf.build_vocabulary(train, min_word_count=2)
    assert idx_to_word == ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog"]
    word_to_idx = {word: idx for idx, word in enumerate(idx_to_word)}
    row = cf.encode(["a", "cat", "dog", "a"], word_to_idx, max_words=3)
    np.testing.assert_array_equal(row, [1, 4, 3, 5, 2])  # <START> a <UNK> dog <END>: cut to 3 words, T = 5
    np.testing.assert_array_equal(cf.encode(["dog"], word_to_idx, max_words=3), [1, 5, 2, 0, 0])
